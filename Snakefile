from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/experiment.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        results_csvs(),
        prompts_csvs(),
        "results/summary.csv",
        "results/summary.md",
        "plots/experiment1_all_configs_phase3b.png",
        "plots/ttft_vs_tokens_recomputed.png",
        "plots/throughput.png",
        "plots/cures_cost_quality.png",
        "results/run_metadata.json",
        report_pages(),
