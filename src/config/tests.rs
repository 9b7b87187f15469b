//! Loading: the contract file, missing variables, unknown keys, secrets kept out of
//! `Debug`.

use secrecy::ExposeSecret;

use super::*;

pub(crate) fn env(name: &str) -> Option<String> {
    match name {
        "SECRET" => Some("s3cr3t".to_string()),
        _ => None,
    }
}

/// The smallest file every release must accept.
pub(crate) const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8080"

[github]
webhook_secrets = ["${SECRET}"]

[queue]
type = "embedded"
path = "var/gitdispatch.db"

[executor]
type = "local"

[[pipelines]]
name = "deploy"
state_machine_arn = "arn:aws:states:us-east-1:123456789012:stateMachine:deploy"
command = ["sh", "deploy/local/deploy.sh"]
concurrency = "serial"

[[pipelines.projects]]
name = "project-api-v2"
repository = "acme/project-api-v2"
default_branch = "main"
skip_flag = "skip_api_v2"

[[routes]]
pipeline = "deploy"
repository = "acme/*"
events = ["push"]
branches = ["hotfix/*"]
environment = "acceptance"
commits = "each"
"#;

#[test]
fn the_minimal_contract_file_loads() {
    let config = Config::from_toml_str(MINIMAL, &env).expect("minimal config loads");
    assert_eq!(config.pipelines[0].concurrency, Concurrency::Serial);
    assert_eq!(
        config.github.webhook_secrets[0].secret().expose_secret(),
        "s3cr3t"
    );
    assert_eq!(config.routes[0].commits, CommitsMode::Each);
}

#[test]
fn every_missing_variable_is_reported_with_its_key_path() {
    let text = r#"
[github]
webhook_secrets = ["${ONE}", { secret = "${TWO}", repositories = ["a/*"] }]
token = "${THREE}"
"#;
    let LoadError::Invalid(problems) = Config::from_toml_str(text, &env).unwrap_err() else {
        panic!("expected problems");
    };
    let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        vec![
            "github.webhook_secrets[0]: environment variable ONE is not set",
            "github.webhook_secrets[1].secret: environment variable TWO is not set",
            "github.token: environment variable THREE is not set",
        ]
    );
}

#[test]
fn unknown_keys_are_refused_with_their_path() {
    let text = MINIMAL.replace("skip_flag = ", "skip_flagg = ");
    let LoadError::Invalid(problems) = Config::from_toml_str(&text, &env).unwrap_err() else {
        panic!("expected problems");
    };
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].path, "pipelines[0].projects[0].skip_flagg");
    assert!(problems[0].message.contains("unknown field `skip_flagg`"));
}

#[test]
fn secrets_do_not_show_in_debug_output() {
    let config = Config::from_toml_str(MINIMAL, &env).unwrap();
    assert!(!format!("{config:?}").contains("s3cr3t"));
}

#[test]
fn a_codepipeline_section_names_the_key_at_fault() {
    let good = format!(
        "{MINIMAL}\n[codepipeline]\nprovider = \"gitdispatch\"\npipelines = [\"deploy\"]\n"
    );
    let config = Config::from_toml_str(&good, &env).expect("a valid [codepipeline] loads");
    let codepipeline = config.codepipeline.unwrap();
    assert_eq!(
        (
            codepipeline.category.as_str(),
            codepipeline.version.as_str()
        ),
        ("Deploy", "1")
    );
    let bad = format!(
        "{MINIMAL}\n[codepipeline]\ncategory = \"Shipping\"\nprovider = \"has spaces\"\nmax_batch_size = 0\npipelines = [\"nope\"]\n"
    );
    let LoadError::Invalid(problems) = Config::from_toml_str(&bad, &env).unwrap_err() else {
        panic!("expected problems");
    };
    let paths: Vec<&str> = problems
        .iter()
        .map(|problem| problem.path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "codepipeline.pipelines[0]",
            "codepipeline.category",
            "codepipeline.provider",
            "codepipeline.max_batch_size",
        ]
    );
    let missing = format!("{MINIMAL}\n[codepipeline]\ncategory = \"Deploy\"\n");
    let LoadError::Invalid(problems) = Config::from_toml_str(&missing, &env).unwrap_err() else {
        panic!("expected problems");
    };
    assert!(problems[0].to_string().contains("provider"), "{problems:?}");
}

#[test]
fn each_surface_has_its_own_networks_and_sns_hosts_are_exact() {
    let text = MINIMAL
        .replace(
            "[github]\n",
            "[github]\nallowed_networks = [\"192.30.252.0/22\", \"not a network\"]\n",
        )
        .replace(
            "[server]\n",
            "[server]\nallowed_networks = [\"10.0.0.0/8\"]\n",
        )
        + "\n[api]\ntokens = [\"an-operator-token-0001\"]\nallowed_networks = [\"300.1.1.1\"]\nsession_hours = 0\n\
           [codecommit]\napi_keys = [\"a-codecommit-key-0001\"]\nallowed_networks = [\"::1/129\"]\n\
           certificate_hosts = [\"sns.*.amazonaws.com\", \"10.1.2.3\", \"sns.private.example.net\", \"localhost:8443\"]\n";
    let LoadError::Invalid(problems) = Config::from_toml_str(&text, &env).unwrap_err() else {
        panic!("expected problems");
    };
    let mut paths: Vec<&str> = problems
        .iter()
        .map(|problem| problem.path.as_str())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "api.allowed_networks[0]",
            "api.session_hours",
            "codecommit.allowed_networks[0]",
            "codecommit.certificate_hosts[0]",
            "codecommit.certificate_hosts[1]",
            "github.allowed_networks[1]",
            "server.allowed_networks",
        ],
        "{problems:?}"
    );
    // The old key alone still works, as GitHub's list, and says it is deprecated.
    let old = MINIMAL.replace(
        "[server]\n",
        "[server]\nallowed_networks = [\"10.0.0.0/8\"]\n",
    );
    let config = Config::from_toml_str(&old, &env).unwrap();
    assert_eq!(config.github_networks(), ["10.0.0.0/8".to_string()]);
    assert!(config.deprecations()[0].contains("github.allowed_networks"));
}
