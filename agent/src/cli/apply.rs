//! `timeguard apply`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

#[derive(clap::Args)]
pub struct Args {
    file: PathBuf,
    /// The policy the agent runs with: a file, or a directory of *.yaml files.
    #[arg(long, default_value = "/etc/timeguard")]
    policy: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    apply(&args.file, &args.policy)
}

/// `timeguard apply SRC [--policy DEST]`: the agent's own way of changing the policy, which
/// self-protection leaves open (the policy files are written by this executable only). SRC
/// is checked first; a policy with errors changes nothing. It is then written over DEST (or,
/// when DEST is a directory, over the file of SRC's name in it) as a new file renamed into
/// place, and the running agent reloads it (within a second, or at once on SIGHUP).
fn apply(src: &Path, dest: &Path) -> anyhow::Result<()> {
    let checked = crate::policy::load(&[src.to_path_buf()], &crate::policy::Host::default());
    let policy = match checked {
        Ok(p) => p,
        Err(problems) => {
            for d in &problems {
                println!("{d}");
            }
            anyhow::bail!(
                "{} is not a valid policy; nothing was changed",
                src.display()
            );
        }
    };
    let target = if dest.is_dir() {
        let name = src
            .file_name()
            .with_context(|| format!("{} names no file", src.display()))?;
        dest.join(name)
    } else {
        dest.to_path_buf()
    };
    let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy".into());
    // Not *.yaml: a directory policy never reads the file half-written.
    let tmp = target.with_file_name(format!(".{name}.timeguard-apply"));
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, &target) {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!("replacing {}", target.display())));
    }
    println!(
        "applied policy \"{}\" to {}; the running agent reloads it",
        policy.name,
        target.display()
    );
    Ok(())
}
