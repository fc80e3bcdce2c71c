rule report_prompts:
    input:
        csv=LAYOUT.prompts_csv(TAG),
        code=code("report_prompts.py"),
    output:
        html=report(
            LAYOUT.prompts_page(TAG),
            caption="../report/prompts.rst",
            category="Prompts",
            labels={
                "configuration": "A={size_a}, B={size_b}",
                "view": "A, B and Q marked",
            },
        ),
    log:
        "logs/report/prompts_a{size_a}_b{size_b}.log",
    wildcard_constraints:
        size_a=r"\d+",
        size_b=r"\d+",
    conda:
        "../../envs/analysis.yaml"
    params:
        label="A={size_a}, B={size_b}",
    script:
        "../scripts/report_prompts.py"


rule report_run:
    input:
        json=LAYOUT.run_metadata,
        code=code("report_run.py"),
    output:
        html=report(
            LAYOUT.run_page,
            caption="../report/run_page.rst",
            category="Run",
            labels={"page": "model, software, hardware, settings"},
        ),
    log:
        "logs/report/run.log",
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/report_run.py"


rule report_protocol:
    input:
        code=code("report_protocol.py"),
    output:
        html=report(
            LAYOUT.protocol_page,
            caption="../report/protocol_page.rst",
            category="Method",
            labels={"page": "the protocol, with this run's settings"},
        ),
    log:
        "logs/report/protocol.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        settings=protocol_settings(),
        configurations=EXPERIMENTS,
    script:
        "../scripts/report_protocol.py"
