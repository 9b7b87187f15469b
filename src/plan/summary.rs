//! The one-screen summary of pipelines and routes `check-config` prints.

use std::fmt;

use super::Planner;
use super::filter::{EnvironmentPart, PathFilter, RefFilter};
use crate::config::{CommitsMode, Concurrency, EventName};

impl fmt::Display for Planner {
    /// A one-screen summary for `check-config`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "pipelines:")?;
        for pipeline in &self.pipelines {
            let projects: Vec<&str> = pipeline
                .projects
                .iter()
                .map(|project| project.name.as_str())
                .collect();
            writeln!(
                f,
                "  {} ({}){}{}",
                pipeline.name,
                match pipeline.concurrency {
                    Concurrency::Parallel => "parallel",
                    Concurrency::Serial => "serial",
                },
                if projects.is_empty() {
                    String::new()
                } else {
                    format!(", projects: {}", projects.join(", "))
                },
                if pipeline.template.is_some() {
                    ", custom input template"
                } else {
                    ""
                }
            )?;
        }
        writeln!(f, "routes:")?;
        for route in &self.routes {
            let events: Vec<&str> = route
                .events
                .iter()
                .map(|event| match event {
                    EventName::Push => "push",
                    EventName::PullRequest => "pull_request",
                })
                .collect();
            let mut filters = Vec::new();
            for (key, filter) in [("branches", &route.branches), ("tags", &route.tags)] {
                match filter {
                    RefFilter::Absent => {}
                    RefFilter::Include(list) => filters.push(format!("{key} {}", list.describe())),
                    RefFilter::Exclude(list) => {
                        filters.push(format!("{key} not {}", list.describe()))
                    }
                }
            }
            match &route.paths {
                PathFilter::Absent => {}
                PathFilter::Include(list) => filters.push(format!("paths {}", list.describe())),
                PathFilter::Exclude(list) => filters.push(format!("paths not {}", list.describe())),
            }
            let commits = if route.events.contains(&EventName::Push) {
                match route.commits {
                    CommitsMode::Each => " (each commit)",
                    CommitsMode::Head => " (head commit only)",
                }
            } else {
                ""
            };
            writeln!(
                f,
                "  {}: {} {} in {}{} -> {} @ {}{}",
                route.name,
                route.sources.as_ref().map_or_else(
                    || "any source".to_string(),
                    |sources| {
                        sources
                            .iter()
                            .map(|source| source.as_str())
                            .collect::<Vec<_>>()
                            .join("|")
                    }
                ),
                events.join("|"),
                route
                    .repository
                    .as_ref()
                    .map_or("any repository", |glob| glob.glob().glob()),
                if filters.is_empty() {
                    String::new()
                } else {
                    format!(", {}", filters.join(", "))
                },
                self.pipelines[route.pipeline].name,
                route
                    .environment
                    .0
                    .iter()
                    .map(|part| match part {
                        EnvironmentPart::Text(text) => text.as_str(),
                        EnvironmentPart::Number => "{number}",
                        EnvironmentPart::Branch => "{branch}",
                    })
                    .collect::<String>(),
                commits,
            )?;
        }
        Ok(())
    }
}
