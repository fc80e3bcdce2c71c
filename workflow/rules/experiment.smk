rule run_experiment:
    input:
        unpack(experiment_inputs),
    output:
        results=report(
            LAYOUT.results_csv(TAG),
            caption="../report/results_csv.rst",
            category="Measurements",
            labels={"configuration": "A={size_a}, B={size_b}"},
        ),
        prompts=report(
            LAYOUT.prompts_csv(TAG),
            caption="../report/prompts_csv.rst",
            category="Prompts",
            labels={
                "configuration": "A={size_a}, B={size_b}",
                "view": "CSV download (prompts_phase3b_a{size_a}_b{size_b}.csv)",
            },
        ),
        record=LAYOUT.record_json(TAG),
        cures=report(
            LAYOUT.cures_csv(TAG),
            caption="../report/cures_csv.rst",
            category="Cures",
            labels={
                "configuration": "A={size_a}, B={size_b}",
                "table": "every trial (CSV)",
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
        "../../envs/experiment.yaml"
    threads: config["experiment_threads"]
    resources:
        # One experiment per accelerator: locally --resources gpu=1, on SLURM its GRES.
        gpu=1,
        mem_mb=config["experiment_mem_mb"],
    params:
        settings=experiment_settings,
        model=model_name(),
        model_file=model_path(),
    script:
        "../scripts/run_experiment.py"
