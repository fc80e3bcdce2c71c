rule summarize:
    input:
        results=results_csvs(),
        records=experiment_records(),
        cures=cures_csvs(),
        code=code("summary"),
    output:
        csv=report(
            "results/summary.csv",
            caption="../report/summary_csv.rst",
            category="Summary",
            labels={"table": "per configuration (CSV)"},
        ),
        md="results/summary.md",
        html=report(
            "results/report/summary.html",
            caption="../report/summary_page.rst",
            category="Summary",
            labels={"table": "degradation, statistics and verdicts"},
        ),
        cures=report(
            "results/cures_summary.csv",
            caption="../report/cures_summary_csv.rst",
            category="Cures",
            labels={"table": "per configuration and cure (CSV)"},
        ),
    log:
        "logs/summarize.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        model_name=model_name(),
        allow_mixed_provenance=config["allow_mixed_provenance"],
    script:
        "../scripts/summarize.py"


rule plot:
    input:
        results=results_csvs(),
        code=code("plot"),
    output:
        main=report(
            "plots/experiment1_all_configs_phase3b.png",
            caption="../report/main_plot.rst",
            category="TTFT",
            labels={"figure": "TTFT and throughput per configuration"},
        ),
        tokens=report(
            "plots/ttft_vs_tokens_recomputed.png",
            caption="../report/ttft_vs_tokens.rst",
            category="TTFT",
            labels={"figure": "TTFT against tokens recomputed"},
        ),
        throughput=report(
            "plots/throughput.png",
            caption="../report/throughput.rst",
            category="Throughput",
            labels={"figure": "generation and decode throughput"},
        ),
    log:
        "logs/plot.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        model_name=model_name(),
    script:
        "../scripts/plot_results.py"


rule plot_cures:
    input:
        cures=cures_csvs(),
        code=code("plot_cures"),
    output:
        png=report(
            "plots/cures_cost_quality.png",
            caption="../report/cures_plot.rst",
            category="Cures",
            labels={"figure": "time saved against quality lost"},
        ),
    log:
        "logs/plot_cures.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        model_name=model_name(),
    script:
        "../scripts/plot_cures.py"


rule run_metadata:
    input:
        records=experiment_records(),
    output:
        json=report(
            "results/run_metadata.json",
            caption="../report/run_metadata.rst",
            category="Run",
            labels={"page": "metadata (JSON)"},
        ),
    log:
        "logs/run_metadata.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        model_name=model_name(),
        config=run_config(),
    script:
        "../scripts/run_metadata.py"
