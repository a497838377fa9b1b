//! The built-in supervisor's service semantics, with real processes.

use std::{path::Path, time::Duration};

use shoal_scheduler::{
    agent::{UnitRuntime, supervisor::Supervisor},
    unit::{UnitFile, UnitName},
};

use shoal_harness::wait_until;

async fn load(supervisor: &Supervisor, name: &str, text: &str) {
    let unit_name = UnitName::parse(name).expect("name");
    let unit = UnitFile::parse(name, text).expect("unit");
    supervisor
        .load(&unit_name, &unit, &unit.hash())
        .await
        .expect("load");
}

async fn state(supervisor: &Supervisor, name: &str) -> (String, String) {
    supervisor
        .units()
        .await
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| (s.active_state, s.sub_state))
        .unwrap_or_default()
}

async fn wait_state(supervisor: &Supervisor, name: &str, active: &str, sub: &str) {
    let what = format!("{name} {active}/{sub}");
    wait_until(Duration::from_secs(10), &what, || async {
        state(supervisor, name).await == (active.to_string(), sub.to_string())
    })
    .await;
}

async fn output(supervisor: &Supervisor, name: &str) -> String {
    supervisor.journal(name, 1000).await.expect("journal")
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

#[tokio::test]
async fn exec_sequence_environment_and_working_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let env_file = dir.path().join("env");
    std::fs::write(
        &env_file,
        "# comment\nFROM_FILE=\"file value\"\nSHARED=file\n",
    )
    .expect("env file");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("work dir");
    let supervisor = Supervisor::new(dir.path()).expect("supervisor");
    let text = format!(
        "[Service]\nEnvironment=GREETING=hi \"SPACED=a b\" SHARED=unit\nEnvironmentFile={}\nEnvironmentFile=-/nonexistent/env\n\
         WorkingDirectory={}\nExecStartPre=/bin/sh -c 'echo pre $GREETING'\nExecStartPre=-/bin/false\n\
         ExecStart=/bin/sh -c 'echo main ${{SPACED}} $FROM_FILE $SHARED in $(pwd) as %n; exec sleep 600'\n\
         ExecStartPost=/bin/echo post $MAINPID\nExecStop=/bin/echo stopping $MAINPID\n",
        env_file.display(),
        work.display()
    );
    load(&supervisor, "seq.service", &text).await;
    supervisor.start("seq.service").await.expect("start");
    wait_state(&supervisor, "seq.service", "active", "running").await;
    wait_until(Duration::from_secs(5), "main output", || async {
        output(&supervisor, "seq.service")
            .await
            .contains("main a b")
    })
    .await;
    let out = output(&supervisor, "seq.service").await;
    assert!(out.contains("pre hi"), "{out}");
    assert!(
        out.contains(&format!(
            "main a b file value file in {} as seq.service",
            work.display()
        )),
        "{out}"
    );
    assert!(out.contains("post "), "{out}");
    supervisor.stop("seq.service").await.expect("stop");
    assert_eq!(
        state(&supervisor, "seq.service").await,
        ("inactive".into(), "dead".into())
    );
    assert!(
        output(&supervisor, "seq.service")
            .await
            .contains("stopping ")
    );
}

#[tokio::test]
async fn failing_pre_command_fails_the_unit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let supervisor = Supervisor::new(dir.path()).expect("supervisor");
    load(
        &supervisor,
        "bad.service",
        "[Service]\nExecStartPre=/bin/false\nExecStart=/bin/sleep 600\n",
    )
    .await;
    supervisor.start("bad.service").await.expect("start");
    wait_state(&supervisor, "bad.service", "failed", "failed").await;
    load(
        &supervisor,
        "missing.service",
        "[Service]\nExecStart=/nonexistent/binary\n",
    )
    .await;
    supervisor.start("missing.service").await.expect("start");
    wait_state(&supervisor, "missing.service", "failed", "failed").await;
    assert!(
        output(&supervisor, "missing.service")
            .await
            .contains("start failed")
    );
}

#[tokio::test]
async fn oneshot_runs_to_completion_and_remain_after_exit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let supervisor = Supervisor::new(dir.path()).expect("supervisor");
    load(
        &supervisor,
        "once.service",
        "[Service]\nType=oneshot\nExecStart=/bin/echo one\nExecStart=/bin/echo two\n",
    )
    .await;
    supervisor.start("once.service").await.expect("start");
    wait_state(&supervisor, "once.service", "inactive", "dead").await;
    wait_until(Duration::from_secs(5), "both commands ran", || async {
        let out = output(&supervisor, "once.service").await;
        out.contains("one\n") && out.contains("two\n")
    })
    .await;
    load(
        &supervisor,
        "stays.service",
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n",
    )
    .await;
    supervisor.start("stays.service").await.expect("start");
    wait_state(&supervisor, "stays.service", "active", "exited").await;
}

#[tokio::test]
async fn restart_policies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let counter = dir.path().join("count");
    let supervisor = Supervisor::new(dir.path()).expect("supervisor");
    let text = format!(
        "[Service]\nRestart=on-failure\nRestartSec=200ms\nExecStart=/bin/sh -c 'echo x >> {}; exit 3'\n",
        counter.display()
    );
    load(&supervisor, "flaky.service", &text).await;
    supervisor.start("flaky.service").await.expect("start");
    wait_until(Duration::from_secs(10), "three attempts", || async {
        std::fs::read_to_string(&counter).is_ok_and(|c| c.lines().count() >= 3)
    })
    .await;
    supervisor.stop("flaky.service").await.expect("stop");
    assert_eq!(state(&supervisor, "flaky.service").await.0, "inactive");

    load(
        &supervisor,
        "clean.service",
        "[Service]\nRestart=on-failure\nRestartSec=100ms\nExecStart=/bin/true\n",
    )
    .await;
    supervisor.start("clean.service").await.expect("start");
    wait_state(&supervisor, "clean.service", "inactive", "dead").await;

    let always = dir.path().join("always");
    let text = format!(
        "[Service]\nRestart=always\nRestartSec=100ms\nExecStart=/bin/sh -c 'echo x >> {}'\n",
        always.display()
    );
    load(&supervisor, "loop.service", &text).await;
    supervisor.start("loop.service").await.expect("start");
    wait_until(
        Duration::from_secs(10),
        "restarts after clean exits",
        || async { std::fs::read_to_string(&always).is_ok_and(|c| c.lines().count() >= 3) },
    )
    .await;
    supervisor.unload("loop.service").await.expect("unload");

    load(
        &supervisor,
        "once-fail.service",
        "[Service]\nRestart=no\nExecStart=/bin/sh -c 'exit 1'\n",
    )
    .await;
    supervisor.start("once-fail.service").await.expect("start");
    wait_state(&supervisor, "once-fail.service", "failed", "failed").await;
}

#[tokio::test]
async fn stop_kills_the_whole_process_group_and_honours_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pids = dir.path().join("pids");
    let supervisor = Supervisor::new(dir.path()).expect("supervisor");
    // The shell ignores SIGTERM, and its child sleeps: both must die by SIGKILL after 1s.
    let text = format!(
        "[Service]\nTimeoutStopSec=1\nExecStart=/bin/sh -c 'trap \"\" TERM; sleep 600 & echo $! > {}; wait; sleep 600'\n",
        pids.display()
    );
    load(&supervisor, "stubborn.service", &text).await;
    supervisor.start("stubborn.service").await.expect("start");
    wait_state(&supervisor, "stubborn.service", "active", "running").await;
    wait_until(Duration::from_secs(5), "child pid", || async {
        std::fs::read_to_string(&pids).is_ok_and(|p| !p.trim().is_empty())
    })
    .await;
    let child: u32 = std::fs::read_to_string(&pids)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid number");
    let main = supervisor.units().await[0].1.main_pid.expect("main pid");
    let started = std::time::Instant::now();
    supervisor.stop("stubborn.service").await.expect("stop");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "stop took {took:?}"
    );
    wait_until(Duration::from_secs(5), "group gone", || async {
        !process_exists(child) && !process_exists(main)
    })
    .await;
}

#[tokio::test]
async fn new_supervisor_adopts_recorded_processes_and_discards_unclaimed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = "[Service]\nExecStart=/bin/sleep 600\n";
    let pids = {
        let first = Supervisor::new(dir.path()).expect("supervisor");
        load(&first, "keep.service", text).await;
        load(&first, "drop.service", text).await;
        first.start("keep.service").await.expect("start");
        first.start("drop.service").await.expect("start");
        wait_state(&first, "keep.service", "active", "running").await;
        wait_state(&first, "drop.service", "active", "running").await;
        let units = first.units().await;
        let pid = |name: &str| {
            units
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, s)| s.main_pid)
                .expect("pid")
        };
        (pid("keep.service"), pid("drop.service"))
    };
    let second = Supervisor::new(dir.path()).expect("supervisor");
    load(&second, "keep.service", text).await;
    let (_, status) = second.units().await.into_iter().next().expect("unit");
    assert_eq!(
        (status.active_state.as_str(), status.main_pid),
        ("active", Some(pids.0))
    );
    assert!(status.started, "adopted units count as started");
    second.finish_adoption().await;
    wait_until(Duration::from_secs(5), "unclaimed unit killed", || async {
        !process_exists(pids.1)
    })
    .await;
    assert!(process_exists(pids.0));
    second.unload("keep.service").await.expect("unload");
    wait_until(Duration::from_secs(5), "adopted unit stopped", || async {
        !process_exists(pids.0)
    })
    .await;
}

#[tokio::test]
async fn invalid_service_settings_are_refused_at_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    let supervisor = Supervisor::new(dir.path()).expect("supervisor");
    for (text, expected) in [
        (
            "[Service]\nType=forking\nExecStart=/bin/true\n",
            "Type=forking",
        ),
        (
            "[Service]\nExecStart=/bin/a\nExecStart=/bin/b\n",
            "more than one ExecStart",
        ),
        ("[Unit]\nDescription=none\n", "no ExecStart"),
        (
            "[Service]\nExecStart=/bin/true\nRestartSec=soon\n",
            "RestartSec",
        ),
        (
            "[Service]\nExecStart=|/bin/true\n",
            "prefix is not supported",
        ),
    ] {
        let unit = UnitFile::parse("x.service", text).expect("parses");
        let name = UnitName::parse("x.service").expect("name");
        let err = supervisor
            .load(&name, &unit, &unit.hash())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(expected),
            "{err} should mention {expected}"
        );
    }
}

#[tokio::test]
async fn user_setting_drops_privileges() {
    let dir = tempfile::tempdir().expect("temp dir");
    let supervisor = Supervisor::new(dir.path()).expect("supervisor");
    // The output file is opened by the supervisor (root) before the switch, so it stays writable.
    load(&supervisor, "who.service", "[Service]\nType=oneshot\nUser=nobody\nExecStart=/bin/sh -c 'echo user=$(id -un) home=$HOME'\n").await;
    supervisor.start("who.service").await.expect("start");
    wait_until(Duration::from_secs(10), "the oneshot to finish", || async {
        output(&supervisor, "who.service")
            .await
            .contains("finished")
    })
    .await;
    let out = output(&supervisor, "who.service").await;
    assert!(out.contains("user=nobody"), "{out}");
    load(
        &supervisor,
        "ghost.service",
        "[Service]\nUser=no-such-user-here\nExecStart=/bin/true\n",
    )
    .await;
    supervisor.start("ghost.service").await.expect("start");
    wait_state(&supervisor, "ghost.service", "failed", "failed").await;
    assert!(
        output(&supervisor, "ghost.service")
            .await
            .contains("no such user no-such-user-here")
    );
}

/// A stand-in for the docker client, enough for the book's units: `run` records its arguments
/// and becomes the container (a sleep), `stop` ends it, `kill` and `rm` fail for a container
/// that is not there, `pull` records the image.
fn fake_docker(dir: &Path) -> std::path::PathBuf {
    let script = dir.join("docker");
    let text = format!(
        "#!/bin/sh\nstate={}\ncmd=$1; shift\ncase $cmd in\n\
         pull) echo \"pull $*\" >> $state/log ;;\n\
         kill|rm) [ -f $state/$1.pid ] || {{ echo \"No such container: $1\" >&2; exit 1; }} ;;\n\
         run) echo \"run $*\" >> $state/log; echo $$ > $state/$2.pid; exec sleep 600 ;;\n\
         stop) echo \"stop $1 MAINPID=$MAINPID\" >> $state/log; kill $(cat $state/$1.pid); rm $state/$1.pid ;;\n\
         esac\n",
        dir.display()
    );
    std::fs::write(&script, text).expect("write docker stand-in");
    let mut permissions = std::fs::metadata(&script).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&script, permissions).expect("chmod");
    script
}

#[tokio::test]
async fn the_books_docker_unit_runs_with_coreos_addresses() {
    let dir = tempfile::tempdir().expect("temp dir");
    let docker = fake_docker(dir.path());
    let docker = docker.display();
    let supervisor = Supervisor::new(dir.path())
        .expect("supervisor")
        .with_environment(vec![
            ("COREOS_PUBLIC_IPV4".into(), "192.0.2.10".into()),
            ("COREOS_PRIVATE_IPV4".into(), "10.0.0.10".into()),
        ]);
    let text = format!(
        "[Unit]\nDescription=nginx\n[Service]\nTimeoutStartSec=0\n\
         ExecStartPre=-{docker} kill nginx\nExecStartPre=-{docker} rm nginx\n\
         ExecStartPre={docker} pull registry.local/nginx\n\
         ExecStart={docker} run --name nginx -p ${{COREOS_PUBLIC_IPV4}}:8080:80 registry.local/nginx\n\
         ExecStop={docker} stop nginx\n"
    );
    load(&supervisor, "nginx.service", &text).await;
    supervisor.start("nginx.service").await.expect("start");
    wait_state(&supervisor, "nginx.service", "active", "running").await;
    let log = dir.path().join("log");
    wait_until(Duration::from_secs(5), "docker run", || async {
        std::fs::read_to_string(&log).is_ok_and(|log| log.contains("run "))
    })
    .await;
    let main = supervisor.units().await[0].1.main_pid.expect("main pid");
    supervisor.stop("nginx.service").await.expect("stop");
    assert_eq!(
        state(&supervisor, "nginx.service").await,
        ("inactive".into(), "dead".into())
    );
    let log = std::fs::read_to_string(&log).expect("docker log");
    assert_eq!(
        log,
        format!(
            "pull registry.local/nginx\nrun --name nginx -p 192.0.2.10:8080:80 registry.local/nginx\n\
             stop nginx MAINPID={main}\n"
        )
    );
    let out = output(&supervisor, "nginx.service").await;
    assert!(out.contains("No such container: nginx"), "{out}");
    assert!(!process_exists(main));
}

#[tokio::test]
async fn exec_prefixes_privileges_and_literal_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let supervisor = Supervisor::new(dir.path())
        .expect("supervisor")
        .with_environment(vec![
            ("COREOS_PUBLIC_IPV4".into(), "192.0.2.10".into()),
            ("COREOS_PRIVATE_IPV4".into(), "10.0.0.10".into()),
        ]);
    let text = "[Service]\nType=oneshot\nUser=nobody\nEnvironment=COREOS_PRIVATE_IPV4=10.9.9.9\n\
                ExecStart=+/bin/sh -c 'echo plus=$(id -un)'\n\
                ExecStart=!/bin/sh -c 'echo bang=$(id -un)'\n\
                ExecStart=/bin/sh -c 'echo plain=$(id -un) private=$COREOS_PRIVATE_IPV4'\n\
                ExecStart=:/bin/echo literal=${COREOS_PUBLIC_IPV4} $$\n\
                ExecStart=/bin/echo expanded=${COREOS_PUBLIC_IPV4} $$\n\
                ExecStart=-+/bin/false\n";
    load(&supervisor, "prefixes.service", text).await;
    supervisor.start("prefixes.service").await.expect("start");
    wait_until(Duration::from_secs(10), "the oneshot to finish", || async {
        output(&supervisor, "prefixes.service")
            .await
            .contains("finished")
    })
    .await;
    let out = output(&supervisor, "prefixes.service").await;
    for expected in [
        "plus=root",
        "bang=root",
        "plain=nobody private=10.9.9.9",
        "literal=${COREOS_PUBLIC_IPV4} $$",
        "expanded=192.0.2.10 $",
    ] {
        assert!(out.contains(expected), "{expected} in {out}");
    }
    assert_eq!(
        state(&supervisor, "prefixes.service").await,
        ("inactive".into(), "dead".into())
    );
}

/// A service whose main process runs until `crash` exists, then exits with a failure.
fn crashable(crash: &Path, unit_section: &str) -> String {
    format!(
        "[Unit]\n{unit_section}\n[Service]\nExecStart=/bin/sh -c 'while [ ! -e {} ]; do sleep 0.1; done; exit 3'\n",
        crash.display()
    )
}

async fn wait_down(supervisor: &Supervisor, name: &str) {
    wait_until(Duration::from_secs(10), &format!("{name} down"), || async {
        state(supervisor, name).await.0 != "active"
    })
    .await;
}

#[tokio::test]
async fn binds_to_waits_for_its_unit_and_stops_with_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let supervisor = Supervisor::new(dir.path()).expect("supervisor");
    let crash = dir.path().join("crash");
    load(&supervisor, "web.service", &crashable(&crash, "")).await;
    let sidekick = "[Unit]\nBindsTo=web.service\n[Service]\nExecStart=/bin/sleep 60\n";
    load(&supervisor, "web-announce.service", sidekick).await;

    supervisor
        .start("web-announce.service")
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        state(&supervisor, "web-announce.service").await.0,
        "inactive",
        "not started while web.service is inactive"
    );
    supervisor.start("web.service").await.expect("start");
    wait_state(&supervisor, "web.service", "active", "running").await;
    wait_state(&supervisor, "web-announce.service", "active", "running").await;

    supervisor.stop("web.service").await.expect("stop");
    wait_state(&supervisor, "web-announce.service", "inactive", "dead").await;

    supervisor.start("web.service").await.expect("start");
    supervisor
        .start("web-announce.service")
        .await
        .expect("start");
    wait_state(&supervisor, "web-announce.service", "active", "running").await;
    std::fs::write(&crash, "").expect("crash web.service");
    wait_down(&supervisor, "web.service").await;
    wait_state(&supervisor, "web-announce.service", "inactive", "dead").await;
    supervisor.stop_all().await;
}

#[tokio::test]
async fn part_of_stops_with_a_stop_but_not_with_a_failure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let supervisor = Supervisor::new(dir.path()).expect("supervisor");
    let crash = dir.path().join("crash");
    load(&supervisor, "app.service", &crashable(&crash, "")).await;
    let part = "[Unit]\nPartOf=app.service\n[Service]\nExecStart=/bin/sleep 60\n";
    load(&supervisor, "app-log.service", part).await;
    for unit in ["app.service", "app-log.service"] {
        supervisor.start(unit).await.expect("start");
        wait_state(&supervisor, unit, "active", "running").await;
    }
    supervisor.stop("app.service").await.expect("stop");
    wait_state(&supervisor, "app-log.service", "inactive", "dead").await;

    for unit in ["app.service", "app-log.service"] {
        supervisor.start(unit).await.expect("start");
        wait_state(&supervisor, unit, "active", "running").await;
    }
    std::fs::write(&crash, "").expect("crash app.service");
    wait_down(&supervisor, "app.service").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        state(&supervisor, "app-log.service").await,
        ("active".into(), "running".into()),
        "PartOf= does not follow a failure"
    );
    supervisor.stop_all().await;
}
