//! Telling processes apart for longer than a pid lasts (Linux `/proc`).
//!
//! A pid alone names a process only while it lives: after a reboot pids start again,
//! and in a container the daemon is PID 1 on every start. A [`ProcessIdentity`] adds
//! the boot, the pid namespace and the process's start time, so a record written by
//! one process is never taken for another that later got the same pid.

use std::path::Path;

/// Who a process is, as far as anyone on this machine can tell: the boot it runs in,
/// its pid namespace, its pid there and when it started (clock ticks after boot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIdentity {
    pub boot_id: String,
    pub pid_namespace: u64,
    pub pid: u32,
    pub start_ticks: u64,
}

/// What can be said of a recorded process now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// Gone: another boot, or its pid is free or held by another process.
    Dead,
    /// In a pid namespace this process cannot see into: assume it lives.
    Unknown,
}

fn read_boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|text| text.trim().to_string())
}

fn read_pid_namespace() -> Option<u64> {
    // "pid:[4026531836]"
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let text = link.to_str()?;
    text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// The fields of `/proc/<pid>/stat` after the command name, which may itself hold
/// spaces and parentheses.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// When `pid` started, in clock ticks after boot (field 22 of `/proc/<pid>/stat`).
pub fn start_ticks(pid: u32) -> Option<u64> {
    // Fields after the name start at field 3 (state): field 22 is index 19.
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// The process group of `pid` (field 5 of `/proc/<pid>/stat`).
pub fn process_group(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(2)?.parse().ok()
}

impl ProcessIdentity {
    /// This process.
    pub fn current() -> ProcessIdentity {
        let pid = std::process::id();
        ProcessIdentity::of(pid).unwrap_or(ProcessIdentity {
            boot_id: String::new(),
            pid_namespace: 0,
            pid,
            start_ticks: 0,
        })
    }

    /// A process of this namespace, while it runs.
    pub fn of(pid: u32) -> Option<ProcessIdentity> {
        Some(ProcessIdentity {
            boot_id: read_boot_id()?,
            pid_namespace: read_pid_namespace()?,
            pid,
            start_ticks: start_ticks(pid)?,
        })
    }

    /// Whether the process this identity was taken of still runs.
    pub fn liveness(&self) -> Liveness {
        let Some(boot_id) = read_boot_id() else {
            return Liveness::Unknown;
        };
        if boot_id != self.boot_id {
            return Liveness::Dead;
        }
        if read_pid_namespace() != Some(self.pid_namespace) {
            return Liveness::Unknown;
        }
        match start_ticks(self.pid) {
            Some(ticks) if ticks == self.start_ticks => Liveness::Alive,
            _ => Liveness::Dead,
        }
    }

    /// `boot/namespace/pid/start`, as stored.
    pub fn to_text(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.boot_id, self.pid_namespace, self.pid, self.start_ticks
        )
    }

    pub fn parse(text: &str) -> Option<ProcessIdentity> {
        let mut parts = text.split('/');
        let identity = ProcessIdentity {
            boot_id: parts.next()?.to_string(),
            pid_namespace: parts.next()?.parse().ok()?,
            pid: parts.next()?.parse().ok()?,
            start_ticks: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(identity)
    }
}

/// The processes of this namespace whose environment holds `name=value`: the processes
/// of an execution carry its name in their environment, which survives pid reuse (a
/// new process with a reused pid has an environment of its own) and reaches the
/// execution's children, whatever process group they moved to.
pub fn marked_with(name: &str, value: &str) -> Vec<u32> {
    let needle = format!("{name}={value}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        // Unreadable (another user's process, or gone meanwhile): not ours.
        let Ok(environment) =
            std::fs::read(Path::new("/proc").join(pid.to_string()).join("environ"))
        else {
            continue;
        };
        if environment
            .split(|byte| *byte == 0)
            .any(|entry| entry == needle.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

/// Whether `pid` names a process that has not ended (a zombie, ended but not yet
/// reaped, counts as ended).
pub fn is_running(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|fields| fields.first().is_some_and(|state| state != "Z"))
}

/// Sends SIGKILL to a process.
pub fn kill(pid: u32) {
    // SAFETY: kill(2) touches no memory of ours.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// Sends SIGKILL to a process group.
pub fn kill_group(group: u32) {
    if group <= 1 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals a process group; it touches no
    // memory of ours.
    unsafe {
        libc::kill(-(group as libc::pid_t), libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessIdentity::current();
        assert!(!me.boot_id.is_empty());
        assert_eq!(me.liveness(), Liveness::Alive);
        assert_eq!(ProcessIdentity::parse(&me.to_text()), Some(me.clone()));
        let reused = ProcessIdentity {
            start_ticks: me.start_ticks + 1,
            ..me.clone()
        };
        assert_eq!(
            reused.liveness(),
            Liveness::Dead,
            "same pid, another process"
        );
        let other_boot = ProcessIdentity {
            boot_id: "another-boot".into(),
            ..me.clone()
        };
        assert_eq!(other_boot.liveness(), Liveness::Dead);
        let other_namespace = ProcessIdentity {
            pid_namespace: me.pid_namespace + 1,
            ..me
        };
        assert_eq!(other_namespace.liveness(), Liveness::Unknown);
        assert_eq!(ProcessIdentity::parse("a/b"), None);
    }

    #[test]
    fn marked_processes_are_found_by_their_environment() {
        let marker = format!("m-{}", uuid::Uuid::new_v4().simple());
        let mut marked = std::process::Command::new("sleep")
            .arg("30")
            .env("GITDISPATCH_TEST_MARK", &marker)
            .spawn()
            .unwrap();
        let mut unmarked = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // Until the child has executed, its environment is still the parent's.
        let mut found = Vec::new();
        for _ in 0..100 {
            found = marked_with("GITDISPATCH_TEST_MARK", &marker);
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(found, vec![marked.id()]);
        assert_eq!(
            process_group(marked.id()),
            process_group(std::process::id())
        );
        kill(marked.id());
        kill(unmarked.id());
        marked.wait().unwrap();
        unmarked.wait().unwrap();
        assert!(marked_with("GITDISPATCH_TEST_MARK", &marker).is_empty());
    }
}
