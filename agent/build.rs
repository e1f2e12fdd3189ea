//! Builds the kernel programs (`agent-ebpf`) for the BPF target and places the object in
//! OUT_DIR, from where `src/bpf/object.rs` embeds it: the `timeguard` binary is self-contained.
//! Needs the nightly toolchain with rust-src and bpf-linker; `cargo xtask build` installs them.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the agent crate sits inside the workspace")?
        .join("agent-ebpf");
    let root = root.to_str().context("workspace path is not UTF-8")?;
    let package = aya_build::Package {
        name: "agent-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default()).context(
        "building the kernel programs (run `cargo xtask build` to install the BPF toolchain)",
    )
}
