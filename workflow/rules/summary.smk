rule summarize:
    input:
        results=per_configuration("results_csv"),
        records=per_configuration("record_json"),
        cures=per_configuration("cures_csv"),
        code=code("summarize.py"),
    output:
        csv=report(
            LAYOUT.summary_csv,
            caption="../report/summary_csv.rst",
            category="Summary",
            labels={"table": "per configuration (CSV)"},
        ),
        md=LAYOUT.summary_md,
        html=report(
            LAYOUT.summary_page,
            caption="../report/summary_page.rst",
            category="Summary",
            labels={"table": "degradation, statistics and verdicts"},
        ),
        cures=report(
            LAYOUT.cures_summary_csv,
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
        results=per_configuration("results_csv"),
        code=code("plot_results.py"),
    output:
        main=report(
            LAYOUT.main_plot,
            caption="../report/main_plot.rst",
            category="TTFT",
            labels={"figure": "TTFT and throughput per configuration"},
        ),
        tokens=report(
            LAYOUT.tokens_plot,
            caption="../report/ttft_vs_tokens.rst",
            category="TTFT",
            labels={"figure": "TTFT against tokens recomputed"},
        ),
        throughput=report(
            LAYOUT.throughput_plot,
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
        cures=per_configuration("cures_csv"),
        code=code("plot_cures.py"),
    output:
        png=report(
            LAYOUT.cures_plot,
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
        records=per_configuration("record_json"),
        code=code("run_metadata.py"),
    output:
        json=report(
            LAYOUT.run_metadata,
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
