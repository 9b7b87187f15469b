//! What one delivery costs before it reaches the disk: verifying its signature,
//! decoding it and planning it, for the payloads GitHub sends (an 8 KB one-commit push,
//! a pull-request event) and the largest ones (a push listing 2,048 commits, a 25 MB
//! body), and how planning grows with the number of commits (it should be linear).
//!
//!   cargo bench --bench pipeline

use std::hint::black_box;

use axum::http::{HeaderMap, HeaderValue};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gitdispatch::app::Compiled;
use gitdispatch::source::github::{self, Decoded, GithubSecrets};
use serde_json::{Value, json};

const SECRET: &str = "bench-secret";

fn compiled() -> Compiled {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/gitdispatch.toml"
    ))
    .unwrap();
    gitdispatch::app::from_toml_str(&text, &|_| Some(SECRET.to_string())).unwrap()
}

/// A push of `commits` commits to a hotfix branch; each commit message padded so
/// the body is about `target_bytes` long when given.
fn push(commits: usize, message_bytes: usize) -> Vec<u8> {
    let commit = |n: usize| {
        json!({
            "id": format!("{:040x}", 0xfeed_0000_u64 + n as u64),
            "tree_id": format!("{:040x}", 1),
            "distinct": true,
            "message": format!("Commit {n} {}", "x".repeat(message_bytes)),
            "timestamp": "2026-12-01T10:00:00+00:00",
            "author": {"name": "Mary Doe", "email": "mary@example.com", "username": "mary"},
            "committer": {"name": "Mary Doe", "email": "mary@example.com", "username": "mary"},
            "added": [], "removed": [], "modified": [format!("src/{n}.rs")],
        })
    };
    let commits: Vec<Value> = (1..=commits).map(commit).collect();
    serde_json::to_vec(&json!({
        "ref": "refs/heads/hotfix/important_patch",
        "before": format!("{:040x}", 0xfeed_0000_u64),
        "after": commits.last().unwrap()["id"],
        "created": false, "deleted": false, "forced": false,
        "head_commit": commits.last().unwrap(),
        "commits": commits,
        "repository": {"full_name": "acme/project-api-v2", "name": "project-api-v2",
                       "owner": {"login": "acme"}, "pushed_at": 1_796_000_000},
        "pusher": {"name": "mary"}, "sender": {"login": "mary"},
    }))
    .unwrap()
}

fn headers(event: &str, body: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("x-github-event", HeaderValue::from_str(event).unwrap());
    headers.insert(
        "x-github-delivery",
        HeaderValue::from_static("72d3162e-cc78-11e3-81ab-4c9367dc0958"),
    );
    headers.insert(
        "x-hub-signature-256",
        HeaderValue::from_str(&github::sign(SECRET.as_bytes(), body)).unwrap(),
    );
    headers
}

/// Verify, decode and plan one delivery: what the listener does before it queues.
fn ingest(secrets: &GithubSecrets, compiled: &Compiled, headers: &HeaderMap, body: &[u8]) -> usize {
    let verified = github::verify(secrets, headers, body).unwrap();
    match github::decode(verified).unwrap() {
        Decoded::Event(event) => compiled.planner.plan(&event).unwrap().requests.len(),
        _ => 0,
    }
}

fn deliveries(c: &mut Criterion) {
    let compiled = compiled();
    let secrets = GithubSecrets::from_config(&compiled.config);
    let pull_request = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/github/pull_request_opened.json"
    ))
    .unwrap();
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        // One commit whose message pads the body to about 8 KB.
        ("push, 1 commit, 8 KB", "push", push(1, 3_150)),
        ("pull request", "pull_request", pull_request),
        ("push, 2,048 commits", "push", push(2048, 40)),
        // GitHub's largest: 2,048 commits of about 12 KB each.
        ("push, 25 MB", "push", push(2048, 12_000)),
    ];
    let mut group = c.benchmark_group("verify, decode, plan");
    for (name, event, body) in &cases {
        let headers = headers(event, body);
        group.throughput(Throughput::Bytes(body.len() as u64));
        if body.len() > 1_000_000 {
            group.sample_size(10);
        }
        group.bench_function(*name, |b| {
            b.iter(|| black_box(ingest(&secrets, &compiled, &headers, black_box(body))))
        });
    }
    group.finish();
}

fn plan_per_commit(c: &mut Criterion) {
    let compiled = compiled();
    let delivery = gitdispatch::event::DeliveryId::parse("bench").unwrap();
    let mut group = c.benchmark_group("plan per commit");
    for commits in [1usize, 16, 256, 2048] {
        let Decoded::Event(event) =
            github::decode_payload("push", &delivery, &push(commits, 40)).unwrap()
        else {
            unreachable!("a push");
        };
        group.throughput(Throughput::Elements(commits as u64));
        group.bench_with_input(BenchmarkId::from_parameter(commits), &event, |b, event| {
            b.iter(|| {
                black_box(
                    compiled
                        .planner
                        .plan(black_box(event))
                        .unwrap()
                        .requests
                        .len(),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, deliveries, plan_per_commit);
criterion_main!(benches);
