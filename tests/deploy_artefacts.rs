//! The deployment artefacts pass their own tools' checks: the systemd unit verifies
//! and its sandbox rates 2.0 or better; every CloudFormation template is clean under
//! cfn-lint with the informational checks on. (Each template is also deployed on moto
//! and the sample state machine run there: `tests/aws.rs`.)

use std::path::Path;
use std::process::Command;

fn repository(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The unit, with its programs where this build put them (verify checks that they can
/// be run).
fn installed_unit(directory: &Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(repository("deploy/systemd/gitdispatch.service"))
        .unwrap()
        .replace(
            "/usr/local/bin/gitdispatch",
            env!("CARGO_BIN_EXE_gitdispatch"),
        );
    let path = directory.join("gitdispatch.service");
    std::fs::write(&path, unit).unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_and_its_sandbox_rates_two_or_better() {
    let directory = tempfile::tempdir().unwrap();
    let unit = installed_unit(directory.path());
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success(), "{said}");
    assert!(
        !said.contains("gitdispatch.service"),
        "verify says something of the unit: {said}"
    );

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let level: f64 = text
        .lines()
        .find_map(|line| {
            line.split("Overall exposure level for gitdispatch.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no overall level in: {text}"));
    assert!(level <= 2.0, "exposure {level}:\n{text}");
    // No account to create first, and room for connections.
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    assert!(unit_text.contains("DynamicUser=yes"));
    assert!(!unit_text.contains("User=gitdispatch"));
    assert!(unit_text.contains("LimitNOFILE=65536"));
}

#[test]
fn every_cloudformation_template_is_clean_under_cfn_lint() {
    let cfn_lint = std::env::var_os("CFN_LINT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repository(".venv/bin/cfn-lint"));
    assert!(
        cfn_lint.exists(),
        "cfn-lint is not installed at {}: run scripts/test, which installs it into .venv",
        cfn_lint.display()
    );
    for template in ["deploy/aws/gitdispatch.yaml", "deploy/aws/codecommit.yaml"] {
        let output = Command::new(&cfn_lint)
            .args(["--include-checks", "I", "--"])
            .arg(repository(template))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{template}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_container_image_probes_itself_and_sends_no_build_output() {
    let containerfile =
        std::fs::read_to_string(repository("deploy/container/Containerfile")).unwrap();
    assert!(containerfile.contains("CMD [\"gitdispatch\", \"health\"]"));
    assert!(containerfile.contains("USER 10001:10001"));
    for line in containerfile
        .lines()
        .filter(|line| line.starts_with("FROM "))
    {
        let image = line.split_whitespace().nth(1).unwrap();
        let tag = image.rsplit(':').next().unwrap();
        assert!(
            tag.chars()
                .next()
                .is_some_and(|first| first.is_ascii_digit()),
            "{image} floats: pin a version"
        );
    }
    let ignore = std::fs::read_to_string(repository(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|line| line == "*"),
        "everything is left out but what is copied"
    );
    for copied in [
        "Cargo.toml",
        "Cargo.lock",
        "src/",
        "config/",
        "deploy/local/",
    ] {
        assert!(ignore.contains(&format!("!{copied}")), "{copied} is sent");
    }
}
