//! Compiles `proto/` with protox (no system `protoc`) and tonic-prost-build, and writes the
//! descriptor set that server reflection serves.

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("strongroom_descriptor.bin");
    let file_descriptors = protox::compile(
        [
            "strongroom/v1/strongroom.proto",
            "strongroom/v1/bench.proto",
        ],
        ["proto"],
    )?;
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&file_descriptors),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Messages that carry field values must not print them: Debug is written by hand.
        .skip_debug([
            ".strongroom.v1.Field",
            ".strongroom.v1.FieldResult",
            ".strongroom.v1.FindRecordsRequest",
            ".strongroom.v1.CreateTokenResponse",
            ".strongroom.v1.RotateTokenResponse",
            ".strongroom.v1.Lookup",
            ".strongroom.v1.ExportSubjectResponse",
            ".strongroom.v1.PlaceHoldRequest",
            ".strongroom.v1.LegalHold",
            // A consent source may name a person (`agent:jdoe`).
            ".strongroom.v1.SetConsentRequest",
            ".strongroom.v1.ConsentEntry",
        ])
        .compile_fds(file_descriptors)?;
    Ok(())
}
