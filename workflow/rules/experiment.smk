rule run_experiment:
    input:
        unpack(experiment_inputs),
    output:
        results=report(
            "results/results_phase3b_a{size_a}_b{size_b}.csv",
            caption="../report/results_csv.rst",
            category="Measurements",
            labels={"configuration": "A={size_a}, B={size_b}"},
        ),
        prompts=report(
            "prompts/prompts_phase3b_a{size_a}_b{size_b}.csv",
            caption="../report/prompts_csv.rst",
            category="Prompts",
            labels={
                "configuration": "A={size_a}, B={size_b}",
                "view": "CSV download (prompts_phase3b_a{size_a}_b{size_b}.csv)",
            },
        ),
    log:
        "logs/experiment/a{size_a}_b{size_b}.log",
    benchmark:
        "logs/benchmark/experiment_a{size_a}_b{size_b}.tsv"
    wildcard_constraints:
        size_a=r"\d+",
        size_b=r"\d+",
    conda:
        "../../envs/kvcache.yaml"
    threads: workflow.cores
    resources:
        gpu=1,
    params:
        settings=experiment_settings,
        model=model_name(),
    script:
        "../scripts/run_experiment.py"
