//! Conformance of text search over args ([`JobFilter::args_contains`]): a case-sensitive
//! substring of the args' JSON text in which `%`, `_` and `\` are plain characters (Postgres
//! must escape them in its `LIKE` pattern), within the scope's tenant, combined with the other
//! filters and paged by id like any listing.

use std::sync::Arc;

use windlass_core::{OrgId, TenantScope};
use windlass_jobs::{EnqueueOptions, JobFilter, JobId, JobState, JobStore, Jobs};

use super::raw;

/// Lists `filter` in `scope` three jobs at a time, checking each page's size; all ids, in order.
async fn paged(store: &Arc<dyn JobStore>, scope: &TenantScope, filter: &JobFilter) -> Vec<JobId> {
    let mut got = Vec::new();
    let mut f = filter.clone().limit(3);
    loop {
        let page = store.list(scope, &f).await.expect("list");
        assert!(page.len() <= 3);
        got.extend(page.iter().map(|j| j.id));
        match page.last() {
            Some(last) if page.len() == 3 => f = f.after(last.id),
            _ => return got,
        }
    }
}

/// `args_contains` finds exactly the jobs whose args hold the text (not `50%` as a wildcard,
/// not `a_b` matching `axb`, a lone backslash only where there is one, `Alice` not `alice`),
/// only the scope's tenant's, with the other filters, over keyset pages of three.
pub async fn args_contains_is_an_escaped_substring_scoped_and_paged(store: Arc<dyn JobStore>) {
    let orgs = [Some("acme"), Some("globex"), None];
    let notes = [
        "50% off", // 0
        "500 off", // 1: matches `50%` only if `%` were a wildcard
        "a_b",     // 2
        "axb",     // 3: matches `a_b` only if `_` were a wildcard
        "c:\\tmp", // 4: the one backslash
        "Alice",   // 5
        "alice",   // 6
        "plain",   // 7
    ];
    let mut rows = Vec::new();
    // Each note three times per tenant, in two queues.
    for round in 0..3 {
        for (n, note) in notes.iter().enumerate() {
            for (o, org) in orgs.iter().enumerate() {
                let mut opts =
                    EnqueueOptions::new().queue(if (n + o + round) % 2 == 0 { "sa" } else { "sb" });
                if let Some(org) = org {
                    opts = opts.org_id(*org);
                }
                rows.push(raw(
                    "search.probe",
                    serde_json::json!({ "note": note, "n": n, "round": round }),
                    &opts,
                ));
            }
        }
    }
    store.insert(rows).await.expect("insert");
    let all = TenantScope::All;
    let jobs = store
        .list(&all, &JobFilter::new().limit(1000))
        .await
        .expect("list all");
    assert_eq!(jobs.len(), notes.len() * 9);
    let note_of = |id: JobId| {
        let j = jobs.iter().find(|j| j.id == id).expect("known job");
        (
            j.args["note"].as_str().expect("note").to_owned(),
            j.org_id.clone(),
        )
    };
    let acme = TenantScope::org(OrgId::new("acme").unwrap());
    // (text, notes it must find)
    let cases: [(&str, &[usize]); 9] = [
        ("50%", &[0]),
        (" off", &[0, 1]),
        ("a_b", &[2]),
        ("_", &[2]),
        ("\\", &[4]),
        ("Alice", &[5]),
        ("lice", &[5, 6]),
        ("no such text", &[]),
        ("%", &[0]),
    ];
    for (text, want) in cases {
        for scope in [&all, &acme] {
            let got = paged(&store, scope, &JobFilter::new().args_contains(text)).await;
            let mut notes_got: Vec<usize> = got
                .iter()
                .map(|&id| {
                    let (note, org) = note_of(id);
                    assert!(
                        scope.allows(org.as_deref()),
                        "{text:?} in {scope:?} gave another tenant's job {id}"
                    );
                    notes
                        .iter()
                        .position(|n| *n == note)
                        .expect("a seeded note")
                })
                .collect();
            let per_note = if scope.org_id().is_none() { 9 } else { 3 };
            assert_eq!(got.len(), want.len() * per_note, "{text:?} in {scope:?}");
            notes_got.sort();
            notes_got.dedup();
            assert_eq!(notes_got, want, "{text:?} in {scope:?}");
            let mut sorted = got.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(
                sorted, got,
                "{text:?} in {scope:?}: not in id order, once each"
            );
        }
    }
    // With the other filters: the same jobs as the filter's own definition, page by page.
    let filters = [
        JobFilter::new().args_contains("lice").queue("sa"),
        JobFilter::new()
            .args_contains("off")
            .org_id("globex")
            .state(JobState::Available),
        JobFilter::new()
            .args_contains("off")
            .kind("search.probe")
            .state(JobState::Available)
            .state(JobState::Completed),
        JobFilter::new()
            .args_contains("plain")
            .state(JobState::Completed),
        JobFilter::new().args_contains(""),
    ];
    for filter in &filters {
        for scope in [&all, &acme] {
            let expected: Vec<JobId> = jobs
                .iter()
                .filter(|j| scope.allows(j.org_id.as_deref()) && filter.matches(j))
                .map(|j| j.id)
                .collect();
            assert_eq!(
                paged(&store, scope, filter).await,
                expected,
                "{filter:?} in {scope:?}"
            );
        }
    }
    // Through a tenant handle: its own jobs only, even when another tenant is asked.
    let tenant = Jobs::from_arc(store.clone()).for_tenant(OrgId::new("globex").unwrap());
    let mine = tenant
        .list(&JobFilter::new().args_contains("Alice"))
        .await
        .unwrap();
    assert_eq!(mine.len(), 3);
    assert!(mine.iter().all(|j| j.org_id.as_deref() == Some("globex")));
    let theirs = tenant
        .list(&JobFilter::new().args_contains("Alice").org_id("acme"))
        .await
        .unwrap();
    assert!(theirs.is_empty());
}
