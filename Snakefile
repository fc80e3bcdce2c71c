from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/experiment.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/conversations.smk"


rule all:
    default_target: True
    input:
        per_configuration("results_csv"),
        per_configuration("prompts_csv"),
        LAYOUT.summary_csv,
        LAYOUT.summary_md,
        LAYOUT.plots_all,
        LAYOUT.run_metadata,
        report_pages(),
        conversation_outputs(),
