//! Docker's spellings, each checked by its effect inside the run (mount options from
//! /proc/self/mountinfo, limits from /proc/self/limits, the stop signal the tool receives, the
//! terminal it gets), and their bad inputs: one line, exit 125, nothing left behind. The `-t`
//! cases run nsrun under a real pseudo-terminal, as an interactive shell runs it.
#![allow(unused_crate_dependencies)]

mod support;

mod common;
use common::*;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, Termios};

/// A host directory readable by whoever runs the tests (root or the CI user).
fn host_dir(tag: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix(&format!("nsrun-docker-{tag}-"))
        .tempdir()
        .unwrap();
    std::fs::write(d.path().join("f"), "x").unwrap();
    d
}

/// The mountinfo line of the mount at `point` that is on top (the last one listed).
fn mount_line(mountinfo: &str, point: &str) -> String {
    mountinfo
        .lines()
        .rfind(|l| l.split_whitespace().nth(4) == Some(point))
        .unwrap_or_else(|| panic!("no mount at {point} in:\n{mountinfo}"))
        .to_string()
}

/// What must hold of a run's stdout and stderr.
type Check = Box<dyn Fn(&str, &str)>;

/// One Docker spelling: flags, what to run, and what must hold of its output.
struct Case {
    flags: Vec<String>,
    script: &'static str,
    check: Check,
}

fn case(flags: &[&str], script: &'static str, check: impl Fn(&str, &str) + 'static) -> Case {
    Case {
        flags: flags.iter().map(|s| s.to_string()).collect(),
        script,
        check: Box::new(check),
    }
}

#[test]
fn each_docker_spelling_has_its_effect_inside_the_run() {
    let dir = host_dir("v");
    let d = dir.path().to_str().unwrap().to_string();
    let bind_ro = format!("type=bind,source={d},target=/b,readonly");
    let vol_z = format!("{d}:/v:ro,Z");
    let vol_tmp = format!("{d}:/tmp/v:rw");
    let mi = "cat /proc/self/mountinfo";
    let cases = vec![
        // Docker's own documented example.
        case(
            &["--tmpfs", "/run:rw,noexec,nosuid,size=65536k"],
            mi,
            |out, _| {
                let l = mount_line(out, "/run");
                assert!(l.contains("noexec") && l.contains("nosuid"), "{l}");
                assert!(l.contains("size=65536k"), "{l}");
            },
        ),
        case(
            &["--tmpfs", "/scratch:ro,mode=700,size=1.5m"],
            mi,
            |out, _| {
                let l = mount_line(out, "/scratch");
                assert!(l.contains(" ro,"), "{l}");
                assert!(l.contains("size=1536k") && l.contains("mode=700"), "{l}");
            },
        ),
        case(
            &[
                "--mount",
                "type=tmpfs,destination=/m,tmpfs-size=64MiB,tmpfs-mode=1770",
            ],
            mi,
            |out, _| {
                let l = mount_line(out, "/m");
                assert!(l.contains("size=65536k") && l.contains("mode=1770"), "{l}");
            },
        ),
        case(
            &["--mount", &bind_ro],
            "cat /proc/self/mountinfo; cat /b/f",
            |out, _| {
                assert!(mount_line(out, "/b").contains(" /b ro,"), "{out}");
                assert!(out.ends_with('x'), "{out}");
            },
        ),
        case(&["-v", &vol_z], mi, |out, err| {
            assert!(mount_line(out, "/v").contains(" /v ro,"), "{out}");
            assert!(err.contains("note:") && err.contains("SELinux"), "{err}");
        }),
        // Below nsrun's own /tmp tmpfs: the mountpoint is made in it.
        case(
            &["-v", &vol_tmp],
            "cat /proc/self/mountinfo; cat /tmp/v/f",
            |out, _| {
                assert!(mount_line(out, "/tmp/v").contains(" /tmp/v rw,"), "{out}");
            },
        ),
        case(&["--shm-size", "1.5g"], mi, |out, _| {
            assert!(
                mount_line(out, "/dev/shm").contains("size=1572864k"),
                "{out}"
            );
        }),
        case(&["--shm-size", "64 m"], mi, |out, _| {
            assert!(mount_line(out, "/dev/shm").contains("size=65536k"), "{out}");
        }),
        case(
            &["--ulimit", "nofile=512:1024", "--ulimit", "core=0"],
            "cat /proc/self/limits",
            |out, _| {
                let line = |name: &str| {
                    out.lines()
                        .find(|l| l.starts_with(name))
                        .unwrap_or_else(|| panic!("{name} in {out}"))
                        .split_whitespace()
                        .skip(name.split_whitespace().count())
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                assert_eq!(line("Max open files"), "512 1024");
                assert_eq!(line("Max core file size"), "0 0");
            },
        ),
        case(&["--group-add", "123"], "id -G", |out, _| {
            assert!(out.split_whitespace().any(|g| g == "123"), "{out}");
        }),
        case(
            &["--device", "/dev/zero:/dev/myzero"],
            "test -c /dev/myzero && head -c 3 /dev/myzero | wc -c",
            |out, _| assert_eq!(out.trim(), "3"),
        ),
        case(
            &["--stop-signal", "SIGUSR1", "--timeout", "1"],
            "trap 'echo got-usr1; exit 0' USR1; trap 'echo got-term; exit 0' TERM; \
             while :; do sleep 0.1; done",
            |out, _| assert_eq!(out, "got-usr1\n"),
        ),
        case(
            &["--stop-signal", "10", "--timeout", "1"],
            "trap 'echo got-usr1; exit 0' USR1; while :; do sleep 0.1; done",
            |out, _| assert_eq!(out, "got-usr1\n"),
        ),
        // Without -t: no terminal anywhere.
        case(
            &[],
            "test -t 0 || echo no0; test -t 1 || echo no1; test -t 2 || echo no2",
            |out, _| assert_eq!(out, "no0\nno1\nno2\n"),
        ),
        case(&["--log-level", "error", "-v", &vol_z], "true", |_, err| {
            assert_eq!(err, "")
        }),
        case(&["--log-level", "debug"], "true", |_, err| {
            assert!(err.contains("nsrun: debug: run id "), "{err}")
        }),
    ];
    for c in cases {
        let flags: Vec<&str> = c.flags.iter().map(String::as_str).collect();
        let o = sh(&flags, c.script);
        let (out, err) = (stdout(&o), stderr(&o));
        let expect = if flags.contains(&"--timeout") { 124 } else { 0 };
        assert_eq!(
            o.status.code(),
            Some(expect),
            "{flags:?}\nstdout: {out}\nstderr: {err}"
        );
        (c.check)(&out, &err);
    }
}

#[test]
fn the_global_log_level_goes_before_the_subcommand_too() {
    let o = Command::new(nsrun_bin())
        .args(["--log-level", "debug", "run", "--rootfs"])
        .arg(rootfs())
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_code(&o, 0);
    assert!(stderr(&o).contains("debug: run id"), "{}", stderr(&o));
    let o = Command::new(nsrun_bin())
        .env("NSRUN_LOG", "debug")
        .args(["run", "--rootfs"])
        .arg(rootfs())
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(stderr(&o).contains("debug: run id"), "{}", stderr(&o));
}

#[test]
fn cidfile_holds_the_run_id_and_is_never_overwritten() {
    let dir = host_dir("cid");
    let f = dir.path().join("cid");
    let fs = f.to_str().unwrap();
    let o = sh(&["--cidfile", fs, "--hostname", "h"], "true");
    assert_code(&o, 0);
    let id = std::fs::read_to_string(&f).unwrap();
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id:?}"
    );
    let o = sh(&["--cidfile", fs], "echo ran");
    assert_code(&o, 125);
    assert_eq!(stdout(&o), "");
    assert!(stderr(&o).contains("exists"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&f).unwrap(), id);
    // A run that cannot start leaves no cidfile behind.
    std::fs::remove_file(&f).unwrap();
    let o = run(&["--cidfile", fs], &["/no/such/tool"]);
    assert_code(&o, 127);
    assert!(!f.exists());
}

#[test]
fn a_hard_limit_above_our_own_needs_root() {
    // SAFETY: getrlimit writes one rlimit.
    let mut own = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `own`.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut own) };
    let more = format!("nofile=64:{}", own.rlim_max + 1);
    let o = sh(&["--ulimit", &more], "cat /proc/self/limits");
    // Root's CAP_SYS_RESOURCE, which some hosts drop even for root.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    // CAP_SYS_RESOURCE is capability 24.
    if eff & (1 << 24) != 0 {
        assert_code(&o, 0);
        assert!(
            stdout(&o).contains(&format!("{}", own.rlim_max + 1)),
            "{}",
            stdout(&o)
        );
    } else {
        assert_code(&o, 125);
        assert!(stderr(&o).contains("needs root"), "{}", stderr(&o));
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    }
}

#[test]
fn bad_docker_spellings_fail_in_one_line_with_125_and_leave_nothing() {
    let dir = host_dir("bad");
    let d = dir.path().to_str().unwrap().to_string();
    let cid = dir.path().join("cid");
    let cases: Vec<Vec<String>> = [
        vec!["--tmpfs", "/x:suid"],
        vec!["--tmpfs", "/x:size=lots"],
        vec!["--tmpfs", "/x:mode=999"],
        vec!["--tmpfs", "/x:uid=me"],
        vec!["--tmpfs", "/x:nr_inodes=5"],
        vec!["--tmpfs", "rel:1m"],
        vec!["-v", &format!("{d}:/b:rshared")],
        vec!["-v", &format!("{d}:/b:bogus")],
        vec!["-v", "named:/b"],
        vec!["--mount", "type=volume,source=v,target=/x"],
        vec![
            "--mount",
            &format!("type=bind,source={d},target=/x,bind-propagation=rslave"),
        ],
        vec!["--mount", "type=bind,source=/no/such/dir,target=/x"],
        vec!["--mount", "type=tmpfs"],
        vec!["--ulimit", "nofile=2:1"],
        vec!["--ulimit", "files=1"],
        vec!["--ulimit", "nofile"],
        vec!["--shm-size", "0"],
        vec!["--shm-size", "lots"],
        vec!["--stop-signal", "SIGNOPE"],
        vec!["--device", "/dev/null:r"],
        vec!["--device", "/etc/passwd"],
        vec!["--device", "/no/such/device"],
        vec!["--group-add", "nosuchgroup"],
        vec!["--log-level", "loud"],
        vec!["-t", "--json"],
        // Docker's refusal: -i -t needs a terminal on stdin (here it is /dev/null).
        vec!["-i", "-t"],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(String::from).collect())
    .collect();
    for flags in cases {
        let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
        all.extend(["--cidfile", cid.to_str().unwrap()]);
        let o = sh(&all, "echo ran");
        assert_code(&o, 125);
        assert_eq!(stdout(&o), "", "{flags:?}");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{flags:?}: {err}");
        assert!(err.starts_with("nsrun: "), "{flags:?}: {err}");
        assert!(!cid.exists(), "{flags:?} left its cidfile");
    }
}

// ---- -t under a real pseudo-terminal -----------------------------------------------------

/// nsrun started on the slave side of a fresh pty, as a login shell would run it: its own
/// session, the slave its controlling terminal and its stdio.
struct UnderPty {
    child: Child,
    master: OwnedFd,
    slave: OwnedFd,
    out: Vec<u8>,
    /// The terminal's settings before nsrun started.
    before: Termios,
}

fn set_size(fd: &OwnedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(r, 0);
}

impl UnderPty {
    fn start(flags: &[&str], cmd: &[&str]) -> UnderPty {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        // openpty's descriptors are inherited across exec: without this, the nsrun of a test
        // running alongside would hold our master open, and our terminal would never hang up.
        for fd in [&pty.master, &pty.slave] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .unwrap();
        }
        set_size(&pty.master, 33, 111);
        let before = termios::tcgetattr(pty.slave.as_fd()).unwrap();
        let mut c = nsrun(flags, cmd);
        let slave = || Stdio::from(pty.slave.try_clone().unwrap());
        c.stdin(slave()).stdout(slave()).stderr(slave());
        // SAFETY: setsid and ioctl are async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            c.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c.spawn().expect("start nsrun");
        UnderPty {
            child,
            master: pty.master,
            slave: pty.slave,
            out: Vec::new(),
            before,
        }
    }

    fn termios(&self) -> Termios {
        termios::tcgetattr(self.slave.as_fd()).unwrap()
    }

    fn write(&self, s: &str) {
        nix::unistd::write(&self.master, s.as_bytes()).unwrap();
    }

    /// Reads until `want` is in the output (since the start) or 20 s pass.
    fn expect(&mut self, want: &str) {
        let end = Instant::now() + Duration::from_secs(20);
        while !String::from_utf8_lossy(&self.out).contains(want) {
            assert!(
                Instant::now() < end,
                "no {want:?} in {:?}",
                String::from_utf8_lossy(&self.out)
            );
            let mut f = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
            if poll(&mut f, PollTimeout::from(200u16)).unwrap_or(0) > 0 {
                let mut buf = [0u8; 4096];
                match nix::unistd::read(&self.master, &mut buf) {
                    Ok(n) if n > 0 => self.out.extend_from_slice(&buf[..n]),
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }

    fn wait(&mut self) -> (i32, Termios) {
        let end = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < end, "nsrun did not end");
            // Keep the master drained so that nsrun never blocks writing to it.
            let mut buf = [0u8; 4096];
            let mut f = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
            if poll(&mut f, PollTimeout::from(50u16)).unwrap_or(0) > 0 {
                if let Ok(n) = nix::unistd::read(&self.master, &mut buf) {
                    self.out.extend_from_slice(&buf[..n]);
                }
            }
        };
        let t = self.termios();
        (status.code().unwrap_or(-1), t)
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }
}

impl Drop for UnderPty {
    /// A failed test leaves no nsrun behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The parts of a terminal's settings raw mode changes.
fn modes(t: &Termios) -> [libc::tcflag_t; 4] {
    [
        t.input_flags.bits(),
        t.output_flags.bits(),
        t.local_flags.bits(),
        t.control_flags.bits(),
    ]
}

#[test]
fn t_gives_the_tool_a_terminal_of_the_runs_own_devpts_with_the_callers_size() {
    let mut p = UnderPty::start(
        &["-t"],
        &[
            "sh",
            "-c",
            "tty; stty size; test -t 0 && test -t 1 && test -t 2 && echo all-ttys; \
             ls /dev/pts; echo TERM=$TERM; echo done",
        ],
    );
    p.expect("done");
    let (code, _) = p.wait();
    let out = p.output();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("/dev/pts/0"), "{out}");
    assert!(out.contains("33 111"), "{out}");
    assert!(out.contains("all-ttys"), "{out}");
    assert!(out.contains("TERM=xterm"), "{out}");
    // The run's own devpts instance: its first pty, and nothing of the host's.
    let listing: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.contains("all-ttys"))
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(listing, ["0", "ptmx"], "{out}");
}

#[test]
fn it_is_an_interactive_shell_with_resizes_ctrl_c_and_the_terminal_restored() {
    let mut p = UnderPty::start(&["-i", "-t"], &["sh"]);
    let before = p.before.clone();
    p.write("stty size; echo A-$((6*7))\r");
    p.expect("A-42");
    assert!(p.output().contains("33 111"), "{}", p.output());
    // While the run is on, the caller's terminal is raw: no echo, no signals from keys.
    let during = p.termios();
    assert!(!during.local_flags.contains(termios::LocalFlags::ECHO));
    assert!(!during.local_flags.contains(termios::LocalFlags::ISIG));
    assert!(before.local_flags.contains(termios::LocalFlags::ISIG));
    // A resize of the caller's terminal reaches the tool (SIGWINCH -> TIOCSWINSZ).
    set_size(&p.master, 50, 130);
    // Give nsrun the SIGWINCH before asking.
    std::thread::sleep(Duration::from_millis(300));
    p.write("stty size; echo B-$((6*7))\r");
    p.expect("B-42");
    assert!(p.output().contains("50 130"), "{}", p.output());
    // Ctrl-C travels as a byte and the run's terminal turns it into the tool's SIGINT.
    p.write("trap 'echo GOT-INT' INT; sleep 10; echo C-$((6*7))\r");
    std::thread::sleep(Duration::from_millis(500));
    p.write("\x03");
    p.expect("GOT-INT");
    p.expect("C-42");
    p.write("exit 3\r");
    let (code, after) = p.wait();
    assert_eq!(code, 3, "{}", p.output());
    assert_eq!(
        modes(&after),
        modes(&before),
        "caller's terminal not restored"
    );
}

#[test]
fn the_terminal_is_restored_on_timeout_and_on_a_signal_to_nsrun() {
    let mut p = UnderPty::start(&["-i", "-t", "--timeout", "1"], &["sleep", "30"]);
    let before = p.before.clone();
    let (code, after) = p.wait();
    assert_eq!(code, 124, "{}", p.output());
    assert_eq!(modes(&after), modes(&before));

    // (An interactive shell ignores SIGTERM, as in Docker: a plain tool here.)
    let mut p = UnderPty::start(&["-i", "-t"], &["sh", "-c", "echo up-$((6*7)); sleep 30"]);
    let before = p.before.clone();
    p.expect("up-42");
    // SIGTERM to nsrun: passed on as the tool's stop signal.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (code, after) = p.wait();
    assert_eq!(code, 128 + libc::SIGTERM, "{}", p.output());
    assert_eq!(modes(&after), modes(&before));
}

#[test]
fn a_caller_terminal_that_hangs_up_ends_the_run() {
    let mut p = UnderPty::start(&["-i", "-t"], &["sh"]);
    p.write("echo up-$((6*7))\r");
    p.expect("up-42");
    // The terminal goes away (an ssh session ends): nsrun gets SIGHUP and passes it on.
    let devnull = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    drop(std::mem::replace(&mut p.master, devnull));
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "nsrun outlived its terminal");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(128 + libc::SIGHUP));
}
