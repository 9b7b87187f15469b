//! Whether a route takes an event: its source, event kind, repository and ref filters,
//! and the environment it names.

use super::compile::CompiledRoute;
use crate::config::EventName;
use crate::event::{Event, EventKind, PullRequest, RefName};
use crate::pattern::PatternList;

/// A route's filter over one kind of ref (branches or tags).
#[derive(Debug, Clone)]
pub(super) enum RefFilter {
    /// No filter of this kind was written.
    Absent,
    Include(PatternList),
    Exclude(PatternList),
}

impl RefFilter {
    pub(super) fn is_absent(&self) -> bool {
        matches!(self, RefFilter::Absent)
    }

    pub(super) fn check(&self, kind: &str, name: &str) -> Result<(), String> {
        match self {
            RefFilter::Absent => Ok(()),
            RefFilter::Include(list) if list.matches(name) => Ok(()),
            RefFilter::Include(list) => {
                Err(format!("{kind} {name:?} is not in {}", list.describe()))
            }
            RefFilter::Exclude(list) if list.matches(name) => Err(format!(
                "{kind} {name:?} is in the ignore list {}",
                list.describe()
            )),
            RefFilter::Exclude(_) => Ok(()),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) enum PathFilter {
    Absent,
    /// Passes when at least one changed path is included.
    Include(PatternList),
    /// Passes unless every changed path is ignored.
    Exclude(PatternList),
}

impl PathFilter {
    pub(super) fn is_absent(&self) -> bool {
        matches!(self, PathFilter::Absent)
    }

    /// `None` paths are unknown (the source did not list them): they pass, because a
    /// filter must never hide a commit it cannot see into.
    pub(super) fn passes(&self, paths: Option<&[String]>) -> bool {
        let Some(paths) = paths else { return true };
        match self {
            PathFilter::Absent => true,
            PathFilter::Include(list) => paths.iter().any(|path| list.matches(path)),
            PathFilter::Exclude(list) => !paths.iter().all(|path| list.matches(path)),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) enum EnvironmentPart {
    Text(String),
    Number,
    Branch,
}

#[derive(Debug, Clone)]
pub(super) struct EnvironmentTemplate(pub(super) Vec<EnvironmentPart>);

impl EnvironmentTemplate {
    pub(super) fn parse(text: &str) -> Result<EnvironmentTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(EnvironmentPart::Text(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("{text:?} has an unclosed {{"));
            };
            let placeholder = &rest[open + 1..open + close];
            parts.push(match placeholder {
                "number" => EnvironmentPart::Number,
                "branch" => EnvironmentPart::Branch,
                other => {
                    return Err(format!(
                        "{{{other}}} is not a placeholder; use {{number}} or {{branch}}"
                    ));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(EnvironmentPart::Text(rest.to_string()));
        }
        if parts.is_empty() {
            return Err("must not be empty".to_string());
        }
        Ok(EnvironmentTemplate(parts))
    }

    pub(super) fn uses_number(&self) -> bool {
        self.0
            .iter()
            .any(|part| matches!(part, EnvironmentPart::Number))
    }

    pub(super) fn render(&self, branch: &str, number: Option<u64>) -> String {
        let mut output = String::new();
        for part in &self.0 {
            match part {
                EnvironmentPart::Text(text) => output.push_str(text),
                EnvironmentPart::Branch => push_identifier(&mut output, branch),
                EnvironmentPart::Number => {
                    // Validation keeps {number} out of routes that take pushes.
                    if let Some(number) = number {
                        output.push_str(&number.to_string());
                    }
                }
            }
        }
        output
    }
}

/// A branch name is written by whoever can push: in an environment name (which
/// reaches `GITDISPATCH_ENVIRONMENT`, the input, and whatever paths or stacks a pipeline
/// names after it) it keeps only `A-Z a-z 0-9 _ -`, every other run of characters
/// becoming one `-`, cut to BRANCH_IN_ENVIRONMENT characters.
fn push_identifier(output: &mut String, branch: &str) {
    const BRANCH_IN_ENVIRONMENT: usize = 100;
    let mut written = 0;
    let mut last_was_dash = false;
    for character in branch.chars() {
        if written >= BRANCH_IN_ENVIRONMENT {
            break;
        }
        if character.is_ascii_alphanumeric() || character == '_' {
            output.push(character);
            last_was_dash = false;
        } else if !last_was_dash {
            output.push('-');
            last_was_dash = true;
        } else {
            continue;
        }
        written += 1;
    }
}

impl CompiledRoute {
    /// Whether every condition of the route holds for the event, or the first that does
    /// not.
    pub(super) fn matches(&self, event: &Event) -> Result<(), String> {
        if let Some(sources) = &self.sources {
            if !sources.contains(&event.source) {
                return Err(format!("source {} is not taken", event.source));
            }
        }
        let kind = match &event.kind {
            EventKind::Push(_) => EventName::Push,
            EventKind::PullRequest(_) => EventName::PullRequest,
            EventKind::Manual(_) => {
                return Err("a manual trigger names its pipeline and goes to no route".into());
            }
        };
        if !self.events.contains(&kind) {
            return Err(format!("{} events are not taken", event.kind.name()));
        }
        if let Some(repository) = &self.repository {
            if !repository.is_match(&event.repository) {
                return Err(format!(
                    "repository {:?} does not match {:?}",
                    event.repository,
                    repository.glob().glob()
                ));
            }
        }
        match &event.kind {
            EventKind::Push(push) => self.matches_ref(&push.git_ref),
            EventKind::PullRequest(pull_request) => self.matches_pull_request(pull_request),
            EventKind::Manual(_) => Err("a manual trigger goes to no route".into()),
        }
    }

    /// GitHub Actions' rule: a route with only branch filters takes no tags, one with
    /// only tag filters takes no branches, one with neither takes both.
    pub(super) fn matches_ref(&self, git_ref: &RefName) -> Result<(), String> {
        if let Some(branch) = git_ref.branch_name() {
            if self.branches.is_absent() && !self.tags.is_absent() {
                return Err(format!(
                    "branch {branch:?} pushed, but the route filters tags only"
                ));
            }
            self.branches.check("branch", branch)
        } else if let Some(tag) = git_ref.tag_name() {
            if self.tags.is_absent() && !self.branches.is_absent() {
                return Err(format!(
                    "tag {tag:?} pushed, but the route filters branches only"
                ));
            }
            self.tags.check("tag", tag)
        } else {
            Err(format!("ref {git_ref} is neither a branch nor a tag"))
        }
    }

    /// For pull requests, `branches` filters the base branch, as in GitHub Actions.
    pub(super) fn matches_pull_request(&self, pull_request: &PullRequest) -> Result<(), String> {
        let action = pull_request.action.as_str();
        if !self.actions.iter().any(|taken| taken == action) {
            return Err(format!("pull request action {action:?} is not taken"));
        }
        let base = pull_request.base_ref.short_name();
        self.branches.check("base branch", base)?;
        if !self.labels.is_empty()
            && !pull_request
                .labels
                .iter()
                .any(|label| self.labels.contains(label))
        {
            return Err(format!(
                "pull request carries none of the labels {:?}",
                self.labels
            ));
        }
        Ok(())
    }
}
