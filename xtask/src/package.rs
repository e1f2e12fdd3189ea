//! The Debian package checked as an operator meets it: what it holds, its unit and the
//! drop-ins verified by systemd, and its maintainer scripts run for real (install, upgrade,
//! remove, purge) into a scratch root, never touching this host's systemd.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::{setup, workspace_root};

/// The time daemons' units the package orders after timeguard with a drop-in
/// (`<unit>.d/timeguard.conf`); the templates cover every instance.
const TIME_DAEMON_UNITS: [&str; 8] = [
    "chrony.service",
    "ntpsec.service",
    "ntpd-rs.service",
    "ptp4l.service",
    "phc2sys.service",
    "ptp4l@.service",
    "phc2sys@.service",
    "systemd-timesyncd.service",
];

const UNIT: &str = "timeguard.service";

/// What the one problem `systemd-analyze verify` finds on a machine without the agent
/// installed says; anything else it says is a problem.
const NOT_INSTALLED: &str = "Command /usr/sbin/timeguard is not executable";

/// The package holds what an operator installs it for, its unit and drop-ins pass
/// `systemd-analyze verify`, and its maintainer scripts do what they say.
pub fn check_deb(deb: &Path) -> anyhow::Result<()> {
    let list = Command::new("dpkg-deb").arg("-c").arg(deb).output()?;
    let list = String::from_utf8_lossy(&list.stdout);
    let drop_ins: Vec<String> = TIME_DAEMON_UNITS
        .iter()
        .map(|u| format!("./lib/systemd/system/{u}.d/timeguard.conf"))
        .collect();
    let mut missing = Vec::new();
    for want in [
        "./usr/sbin/timeguard",
        "./lib/systemd/system/timeguard.service",
        "./etc/timeguard/default.yaml",
        "./usr/share/timeguard/policies/chrony.yaml",
        "./usr/share/man/man8/timeguard.8.gz",
        "./usr/share/bash-completion/completions/timeguard",
    ]
    .into_iter()
    .chain(drop_ins.iter().map(String::as_str))
    {
        if !list.lines().any(|l| l.ends_with(want)) {
            missing.push(want);
        }
    }
    if !missing.is_empty() {
        bail!("{} lacks {missing:?}:\n{list}", deb.display());
    }
    // The operator's policy is a conffile: an upgrade never overwrites their edits.
    let conffiles = Command::new("dpkg-deb")
        .arg("--info")
        .arg(deb)
        .arg("conffiles")
        .output()?;
    if !String::from_utf8_lossy(&conffiles.stdout).contains("/etc/timeguard/default.yaml") {
        bail!(
            "{}: /etc/timeguard/default.yaml is not a conffile",
            deb.display()
        );
    }
    check_units()?;
    check_maintainer_scripts(deb)?;
    println!(
        "{}: the agent, its unit and drop-ins (verified), the policies, the man page and completions; maintainer scripts: install, upgrade, remove, purge",
        deb.display()
    );
    Ok(())
}

/// The unit's `Before=` names every time daemon's unit that a drop-in orders after it (the
/// templates aside: `Before=` cannot name them), and `systemd-analyze verify` finds nothing
/// wrong with the unit and each daemon's unit with its drop-in: no ordering cycle (with
/// systemd-timesyncd, which runs before sysinit.target like timeguard), no unknown setting.
/// The check is tried on a broken copy too, which it must reject.
fn check_units() -> anyhow::Result<()> {
    setup::ensure_systemd_analyze()?;
    let unit_path = workspace_root().join("deploy/systemd").join(UNIT);
    let unit = std::fs::read_to_string(&unit_path)
        .with_context(|| format!("reading {}", unit_path.display()))?;
    let before: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Before="))
        .flat_map(str::split_whitespace)
        .collect();
    let unlisted: Vec<&&str> = TIME_DAEMON_UNITS
        .iter()
        .filter(|u| !u.contains("@.") && !before.contains(u))
        .collect();
    if !unlisted.is_empty() {
        bail!(
            "{}: Before= lacks {unlisted:?}, which the package orders after it",
            unit_path.display()
        );
    }
    let drop_in =
        std::fs::read_to_string(workspace_root().join("deploy/systemd/drop-ins/timeguard.conf"))
            .context("reading the drop-in")?;
    let problems = verify(&unit, &drop_in, "")?;
    if !problems.is_empty() {
        bail!(
            "systemd-analyze verify: the unit and the drop-ins:\n{}",
            problems.join("\n")
        );
    }
    // A timesyncd that must start before timeguard (a cycle) and a misspelt setting: the
    // check must see both, or it proves nothing.
    let broken = verify(&unit, &drop_in, "Before=timeguard.service\nWantedBye=x\n")?;
    let seen = |what: &str| broken.iter().any(|l| l.contains(what));
    if !seen("ordering cycle") || !seen("WantedBye") {
        bail!(
            "systemd-analyze verify did not reject a broken drop-in (a cycle, an unknown key); it said:\n{}",
            broken.join("\n")
        );
    }
    println!(
        "systemd-analyze verify: {UNIT} and {} drop-ins: no problems (and a broken drop-in is rejected)",
        TIME_DAEMON_UNITS.len()
    );
    Ok(())
}

/// Runs `systemd-analyze verify` on the unit and each time daemon's unit with its drop-in
/// (and `extra` added to systemd-timesyncd's), in a scratch unit directory searched before
/// the system's: the daemons' units are stubs there, so that none need be installed; the
/// stub of systemd-timesyncd keeps its real ordering. What it said, less the one line
/// about the agent not being installed here.
fn verify(unit: &str, drop_in: &str, extra: &str) -> anyhow::Result<Vec<String>> {
    let dir = workspace_root().join("target/systemd-verify");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(UNIT), unit)?;
    let mut verified = vec![dir.join(UNIT)];
    for name in TIME_DAEMON_UNITS {
        let ordering = if name == "systemd-timesyncd.service" {
            "DefaultDependencies=no\nAfter=systemd-sysusers.service\nBefore=time-set.target sysinit.target shutdown.target\nConflicts=shutdown.target\nWants=time-set.target\n"
        } else {
            ""
        };
        std::fs::write(
            dir.join(name),
            format!(
                "[Unit]\nDescription=stub of {name}\n{ordering}[Service]\nExecStart=/bin/true\n"
            ),
        )?;
        let d = dir.join(format!("{name}.d"));
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("timeguard.conf"), drop_in)?;
        if name == "systemd-timesyncd.service" && !extra.is_empty() {
            std::fs::write(d.join("zz-broken.conf"), format!("[Unit]\n{extra}"))?;
        }
        // A template is verified through an instance of it.
        verified.push(dir.join(name.replace("@.", "@eth0.")));
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&verified)
        // The trailing colon: then the system's own units (the targets ordered against).
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()))
        .output()
        .context("running systemd-analyze verify")?;
    let said = String::from_utf8_lossy(&out.stderr);
    Ok(said
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(NOT_INSTALLED))
        .map(str::to_string)
        .collect())
}

/// A scratch root that dpkg installs into, its own package database, and the maintainer
/// scripts run outside a chroot with DPKG_ROOT set (as debootstrap and mmdebstrap do): the
/// scripts find systemd is not theirs to touch and say so.
struct ScratchRoot {
    root: PathBuf,
}

/// What one dpkg run said on stderr (the maintainer scripts' messages).
struct Said(String);

impl ScratchRoot {
    fn new() -> anyhow::Result<Self> {
        let root = workspace_root().join("target/deb-root");
        let _ = std::fs::remove_dir_all(&root);
        let admin = root.join("var/lib/dpkg");
        for d in ["info", "updates", "triggers"] {
            std::fs::create_dir_all(admin.join(d))?;
        }
        std::fs::write(admin.join("status"), "")?;
        std::fs::write(admin.join("available"), "")?;
        std::fs::create_dir_all(root.join("var/log"))?;
        Ok(ScratchRoot { root })
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// `dpkg ARGS` on this root; fails with what it said when dpkg fails.
    fn dpkg(&self, args: &[&std::ffi::OsStr]) -> anyhow::Result<Said> {
        let out = Command::new("dpkg")
            .arg(format!("--root={}", self.root.display()))
            .arg(format!("--log={}", self.path("var/log/dpkg.log").display()))
            // The package's dependencies (libc) are this host's, not the scratch root's.
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--force-unsafe-io",
            ])
            .args(args)
            .output()
            .context("running dpkg")?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("dpkg {args:?} in {} failed:\n{said}", self.root.display());
        }
        Ok(Said(said))
    }

    fn exists(&self, p: &str) -> bool {
        self.path(p).symlink_metadata().is_ok()
    }
}

impl Said {
    fn says(&self, what: &str) -> bool {
        self.0.contains(what)
    }
}

/// A copy of the package with its version raised, for an upgrade.
fn version_bumped(deb: &Path, work: &Path) -> anyhow::Result<PathBuf> {
    let tree = work.join("bumped");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(work)?;
    crate::run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree))?;
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control)?;
    let text: String = text
        .lines()
        .map(|l| match l.strip_prefix("Version: ") {
            Some(v) => format!("Version: {v}+upgrade1\n"),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&control, text)?;
    let out = work.join("timeguard-upgrade.deb");
    crate::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "-b"])
            .arg(&tree)
            .arg(&out),
    )?;
    Ok(out)
}

/// Installs the package into a scratch root, upgrades it to a version-bumped copy, removes
/// and purges it, and checks what each step left and said. This host's systemd is never
/// touched: an enable link appearing in this host's /etc is a failure.
fn check_maintainer_scripts(deb: &Path) -> anyhow::Result<()> {
    // deb-systemd-helper, which the scripts enable the unit with.
    setup::ensure_debs(
        &["init-system-helpers".into()],
        "running the maintainer scripts",
    )?;
    let host_link = Path::new("/etc/systemd/system/multi-user.target.wants/timeguard.service");
    let host_had_link = host_link.symlink_metadata().is_ok();
    let r = ScratchRoot::new()?;
    let enabled = "etc/systemd/system/multi-user.target.wants/timeguard.service";
    let mut problems = Vec::new();
    let mut expect = |ok: bool, what: &str| {
        if !ok {
            problems.push(what.to_string());
        }
    };

    let said = r.dpkg(&["-i".as_ref(), deb.as_os_str()])?;
    let state_mode = std::fs::metadata(r.path("var/lib/timeguard"))
        .map(|m| m.permissions().mode() & 0o7777)
        .ok();
    expect(
        r.exists("usr/sbin/timeguard"),
        "install: no /usr/sbin/timeguard",
    );
    expect(
        r.exists("lib/systemd/system/chrony.service.d/timeguard.conf"),
        "install: no drop-in for chrony",
    );
    expect(
        state_mode == Some(0o700),
        &format!(
            "install: /var/lib/timeguard is {:?}, not 0700",
            state_mode.map(|m| format!("{m:o}"))
        ),
    );
    expect(r.exists(enabled), "install: the unit was not enabled");
    expect(
        said.says("systemd is not running here"),
        &format!(
            "install: postinst did not say it left systemd alone:\n{}",
            said.0
        ),
    );

    // The agent's state survives an upgrade; the removal's messages are not said.
    std::fs::write(r.path("var/lib/timeguard/last-good.yaml"), "kept\n")?;
    let bumped = version_bumped(deb, &r.root.with_extension("work"))?;
    let said = r.dpkg(&["-i".as_ref(), bumped.as_os_str()])?;
    let version = Command::new("dpkg-query")
        .arg(format!("--admindir={}", r.path("var/lib/dpkg").display()))
        .args(["-W", "-f=${Version}", "timeguard"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    expect(
        version.ends_with("+upgrade1"),
        &format!("upgrade: the version installed is {version:?}"),
    );
    expect(
        !said.says("removing"),
        &format!("upgrade: prerm acted as for a removal:\n{}", said.0),
    );
    expect(
        r.exists("var/lib/timeguard/last-good.yaml"),
        "upgrade: /var/lib/timeguard was not kept",
    );
    expect(r.exists(enabled), "upgrade: the unit is no longer enabled");

    std::fs::create_dir_all(r.path("var/log/timeguard"))?;
    std::fs::write(r.path("var/log/timeguard/audit.jsonl"), "{}\n")?;
    let said = r.dpkg(&["--remove".as_ref(), "timeguard".as_ref()])?;
    expect(
        said.says("removing: stopping the agent and removing its pinned programs"),
        &format!("remove: prerm did not say it stops and unpins:\n{}", said.0),
    );
    expect(
        said.says("nothing unpinned"),
        &format!(
            "remove: prerm did not say it left this host's pins alone:\n{}",
            said.0
        ),
    );
    expect(
        !r.exists("usr/sbin/timeguard"),
        "remove: /usr/sbin/timeguard stays",
    );
    expect(
        r.exists("etc/timeguard/default.yaml"),
        "remove: the operator's policy (a conffile) went; only purge removes it",
    );
    expect(
        r.exists("var/lib/timeguard/last-good.yaml"),
        "remove: /var/lib/timeguard went; only purge removes it",
    );

    let said = r.dpkg(&["--purge".as_ref(), "timeguard".as_ref()])?;
    expect(
        !r.exists("var/lib/timeguard"),
        "purge: /var/lib/timeguard stays",
    );
    expect(
        !r.exists("etc/timeguard/default.yaml"),
        "purge: the policy stays",
    );
    expect(!r.exists(enabled), "purge: the enable link stays");
    expect(
        r.exists("var/log/timeguard/audit.jsonl") && said.says("the audit trail stays"),
        &format!(
            "purge: the audit trail must stay, and that be said:\n{}",
            said.0
        ),
    );
    expect(
        host_link.symlink_metadata().is_ok() == host_had_link,
        "this host's systemd configuration was changed",
    );
    if !problems.is_empty() {
        bail!(
            "the package's maintainer scripts in {}:\n{}",
            r.root.display(),
            problems.join("\n")
        );
    }
    let _ = std::fs::remove_dir_all(&r.root);
    let _ = std::fs::remove_dir_all(r.root.with_extension("work"));
    Ok(())
}
