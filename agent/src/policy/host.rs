//! The host a policy is checked against: where its files live (`/`, or an image's root)
//! and which time daemons are installed and enabled there.

use std::path::{Path, PathBuf};

use agent_common::clock::op;

use super::ExeId;

/// A time daemon timeguard knows, where Debian installs it, the systemd units that run it,
/// and the least it needs to keep time.
pub struct KnownDaemon {
    pub name: &'static str,
    pub exes: &'static [&'static str],
    pub units: &'static [&'static str],
    pub needs: u32,
}

const DISCIPLINE: u32 = op::SLEW | op::FREQUENCY | op::STATUS;

pub const DAEMONS: [KnownDaemon; 6] = [
    KnownDaemon {
        name: "chronyd",
        exes: &["/usr/sbin/chronyd"],
        units: &["chrony.service", "chronyd.service"],
        needs: DISCIPLINE,
    },
    KnownDaemon {
        name: "ntpd",
        exes: &["/usr/sbin/ntpd"],
        units: &["ntpsec.service", "ntp.service", "ntpd.service"],
        needs: DISCIPLINE,
    },
    KnownDaemon {
        name: "ntpd-rs",
        exes: &["/usr/bin/ntp-daemon"],
        units: &["ntpd-rs.service"],
        needs: DISCIPLINE,
    },
    KnownDaemon {
        name: "phc2sys",
        exes: &["/usr/sbin/phc2sys"],
        units: &["phc2sys.service", "phc2sys@.service"],
        needs: op::SLEW | op::FREQUENCY,
    },
    KnownDaemon {
        name: "ptp4l",
        exes: &["/usr/sbin/ptp4l"],
        units: &["ptp4l.service", "ptp4l@.service"],
        needs: op::PHC,
    },
    KnownDaemon {
        name: "systemd-timesyncd",
        exes: &[
            "/usr/lib/systemd/systemd-timesyncd",
            "/lib/systemd/systemd-timesyncd",
        ],
        units: &["systemd-timesyncd.service"],
        needs: DISCIPLINE,
    },
];

/// A daemon found installed and enabled.
pub struct InstalledDaemon {
    pub daemon: &'static KnownDaemon,
    pub exe: PathBuf,
    pub exe_id: ExeId,
    pub unit: String,
}

pub struct Host {
    pub root: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            root: PathBuf::from("/"),
        }
    }
}

impl Host {
    /// A path of the policy, as found on this host.
    pub fn path(&self, p: &Path) -> PathBuf {
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }

    pub fn exe_id(&self, p: &Path) -> std::io::Result<ExeId> {
        ExeId::of(&self.path(p))
    }

    /// The uid of a user: a number as it is, a name from the host's `/etc/passwd`.
    pub fn uid(&self, user: &str) -> Result<u32, String> {
        if let Ok(n) = user.parse::<u32>() {
            return if n == agent_common::policy::ANY_UID {
                Err(format!("uid {n} is not a user"))
            } else {
                Ok(n)
            };
        }
        let passwd = self.path(Path::new("/etc/passwd"));
        let text = std::fs::read_to_string(&passwd)
            .map_err(|e| format!("cannot read {}: {e}", passwd.display()))?;
        let users: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split(':');
                Some((f.next()?, f.nth(1)?))
            })
            .collect();
        if let Some(uid) = users
            .iter()
            .find(|(name, _)| *name == user)
            .and_then(|(_, uid)| uid.parse().ok())
        {
            return Ok(uid);
        }
        let names: Vec<&str> = users.iter().map(|(n, _)| *n).collect();
        Err(match super::diagnostic::did_you_mean(user, &names) {
            Some(m) => format!(
                "user `{user}` is not in {}; did you mean `{m}`?",
                passwd.display()
            ),
            None => format!(
                "user `{user}` is not in {}; write a user name from it or a uid",
                passwd.display()
            ),
        })
    }

    /// Whether a systemd unit is enabled: a link to it in some `*.wants/` directory.
    /// Instances (`phc2sys@eth0.service`) count for their template (`phc2sys@.service`).
    fn enabled_unit(&self, unit: &str) -> Option<String> {
        let etc = self.path(Path::new("/etc/systemd/system"));
        let (stem, template) = match unit.split_once("@.") {
            Some((stem, _)) => (format!("{stem}@"), true),
            None => (unit.to_string(), false),
        };
        for wants in std::fs::read_dir(&etc).ok()?.filter_map(Result::ok) {
            if !wants.file_name().to_string_lossy().ends_with(".wants") {
                continue;
            }
            for entry in std::fs::read_dir(wants.path()).ok()?.filter_map(Result::ok) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if (template && name.starts_with(&stem) && name.ends_with(".service"))
                    || name == unit
                {
                    return Some(name);
                }
            }
        }
        None
    }

    /// Known time daemons whose executable exists and whose unit is enabled.
    pub fn installed_daemons(&self) -> Vec<InstalledDaemon> {
        let mut found = Vec::new();
        for daemon in &DAEMONS {
            let Some((exe, exe_id)) = daemon.exes.iter().find_map(|e| {
                self.exe_id(Path::new(e))
                    .ok()
                    .map(|id| (PathBuf::from(e), id))
            }) else {
                continue;
            };
            if let Some(unit) = daemon.units.iter().find_map(|u| self.enabled_unit(u)) {
                found.push(InstalledDaemon {
                    daemon,
                    exe,
                    exe_id,
                    unit,
                });
            }
        }
        found
    }
}
