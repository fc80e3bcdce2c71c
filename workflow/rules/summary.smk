rule summarize:
    input:
        results=results_csvs(),
    output:
        csv=report(
            "results/summary.csv",
            caption="../report/summary_csv.rst",
            category="Summary",
            labels={"table": "per configuration (CSV)"},
        ),
        md="results/summary.md",
    log:
        "logs/summarize.log",
    conda:
        "../../envs/kvcache.yaml"
    params:
        model_name=model_name(),
    script:
        "../scripts/summarize.py"


rule plot:
    input:
        results=results_csvs(),
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
        "../../envs/kvcache.yaml"
    params:
        model_name=model_name(),
    script:
        "../scripts/plot_results.py"


rule run_metadata:
    input:
        model=model_path(),
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
        "../../envs/kvcache.yaml"
    threads: workflow.cores
    resources:
        gpu=1,
    params:
        model_name=model_name(),
        config=run_config(),
    script:
        "../scripts/run_metadata.py"
