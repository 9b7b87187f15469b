use super::*;
use crate::config::tests::{MINIMAL, env};

#[test]
fn semantic_problems_are_all_reported_at_once() {
    let text = MINIMAL
        .replace("pipeline = \"deploy\"", "pipeline = \"nope\"")
        .replace("branches = [\"hotfix/*\"]", "branches = [\"[\"]")
        + "\n[worker]\nconcurrency = 0\n[[pipelines]]\nname = \"deploy\"\n";
    let LoadError::Invalid(problems) = from_toml_str(&text, &env).unwrap_err() else {
        panic!("expected problems");
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"worker.concurrency"), "{paths:?}");
    assert!(paths.contains(&"pipelines[1].name"), "{paths:?}");
    assert!(paths.contains(&"pipelines[1].command"), "{paths:?}");
    assert!(paths.contains(&"routes[0].pipeline"), "{paths:?}");
    assert!(paths.contains(&"routes[0].branches[0]"), "{paths:?}");
}

#[test]
fn reporting_settings_are_checked_each_with_its_key() {
    let problems = |github: &str, route: &str| -> Vec<String> {
        let text = MINIMAL
            .replace(
                "webhook_secrets = [\"${SECRET}\"]",
                &format!("webhook_secrets = [\"${{SECRET}}\"]\n{github}"),
            )
            .replace(
                "commits = \"each\"",
                &format!("commits = \"each\"\n{route}"),
            );
        match from_toml_str(&text, &env) {
            Ok(_) => Vec::new(),
            Err(LoadError::Invalid(problems)) => {
                problems.into_iter().map(|problem| problem.path).collect()
            }
            Err(other) => panic!("{other}"),
        }
    };
    assert_eq!(problems("token = \"t\"", ""), Vec::<String>::new());
    assert_eq!(problems("app_id = 1", ""), ["github.app_id"]);
    assert_eq!(
        problems("app_id = 1\ntoken = \"t\"\nprivate_key = \"k\"", ""),
        ["github.token"]
    );
    assert_eq!(
        problems("private_key = \"k\"\ninstallation_id = 3", ""),
        ["github.private_key", "github.installation_id"]
    );
    assert_eq!(
        problems("token = \"t\"\ncheck_runs = true", ""),
        ["github.check_runs"]
    );
    assert_eq!(
        problems(
            "api_url = \"ftp://example.com\"\nreports_per_minute = 0",
            ""
        ),
        ["github.api_url", "github.reports_per_minute"]
    );
    assert_eq!(
        problems("", "environment_url = \"https://{branch}.example.com\""),
        ["routes[0].environment_url"],
        "only pull requests' previews are deployments"
    );
    let preview = "events = [\"pull_request\"]\nenvironment_url_path = \"$.[\"";
    let text = MINIMAL.replace("events = [\"push\"]", preview);
    let LoadError::Invalid(found) = from_toml_str(&text, &env).unwrap_err() else {
        panic!("expected problems");
    };
    let paths: Vec<&str> = found.iter().map(|problem| problem.path.as_str()).collect();
    assert_eq!(paths, ["routes[0].environment_url_path"]);
}

#[test]
fn aws_settings_are_checked() {
    let text = MINIMAL
        .replace(
            "type = \"embedded\"\npath = \"var/gitdispatch.db\"",
            "type = \"sqs\"\nurl = \"https://sqs.us-east-1.amazonaws.com/1/jobs\"",
        )
        .replace("type = \"local\"", "type = \"stepfunctions\"")
        .replace(
            "state_machine_arn = \"arn:aws:states:us-east-1:123456789012:stateMachine:deploy\"",
            "state_machine_arn = \"arn:aws:states:us-east-1:123456789012:deploy\"",
        )
        + "[worker]\nbatch_size = 11\n";
    let LoadError::Invalid(problems) = from_toml_str(&text, &env).unwrap_err() else {
        panic!("expected problems");
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "worker.batch_size",
            "pipelines[0].concurrency",
            "pipelines[0].state_machine_arn"
        ]
    );
    assert!(problems[1].message.contains("needs a FIFO queue"));

    let fifo = MINIMAL
        .replace(
            "type = \"embedded\"\npath = \"var/gitdispatch.db\"",
            "type = \"sqs\"\nurl = \"https://sqs.us-east-1.amazonaws.com/1/jobs.fifo\"",
        )
        .replace("type = \"local\"", "type = \"stepfunctions\"");
    let compiled = from_toml_str(&fifo, &env).unwrap();
    assert_eq!(compiled.config.queue.type_name(), "sqs (FIFO)");
}

/// What a reload cannot take is found by comparing typed sections: a rotated GitHub
/// token (the client is made at start) is one, whatever its length; rotated webhook
/// secrets and a new allow-list are taken.
#[test]
fn restart_only_changes_are_found_by_comparing_typed_sections() {
    let with = |github: &str| {
        let text = MINIMAL.replace(
            "webhook_secrets = [\"${SECRET}\"]",
            &format!("webhook_secrets = [\"${{SECRET}}\"]\n{github}"),
        );
        from_toml_str(&text, &env).unwrap().config
    };
    let old = with("token = \"ghp_first_token_000000\"");
    let rotated = with("token = \"ghp_other_token_111111\"");
    assert_eq!(
        restart_only_changes(&old, &rotated),
        vec!["github (token, App, api_url, redeliver, reconcile)".to_string()]
    );
    let same_token =
        with("token = \"ghp_first_token_000000\"\nallowed_networks = [\"10.0.0.0/8\"]");
    assert!(restart_only_changes(&old, &same_token).is_empty());
    let mut secrets = old.clone();
    secrets.github.webhook_secrets.clear();
    assert!(restart_only_changes(&old, &secrets).is_empty());
}
