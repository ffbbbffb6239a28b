fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc: no system package needed.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    tonic_build::configure().compile_protos(
        &["../../proto/flotilla.proto", "../../proto/raft.proto"],
        &["../../proto"],
    )?;
    println!("cargo:rerun-if-changed=../../proto");
    Ok(())
}
