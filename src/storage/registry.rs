//! `Registry`: the stores of one berth and the routing of repositories to them (zot's
//! `subPaths`). A repository belongs to the store whose route matches the most leading
//! segments of its name (`/a/b` before `/a`), else to the default store; it keeps its full
//! name inside that store's root. A route is a directory of repositories: the repository
//! named exactly `a` is not under `/a`, as in zot, whose routes are one segment long.
//! Routing answers with the route's `Reads`, so a wrapper (a pull-through mirror) can stand
//! between a route and the front end.

use super::{Reads, Store, StoreError};
use crate::oci::RepoName;
use std::sync::Arc;

/// The default store and the routed ones.
pub struct Registry {
    default: Arc<dyn Reads>,
    /// Route segments and their store, longest routes first.
    routes: Vec<(Vec<String>, Arc<dyn Reads>)>,
}

impl Registry {
    /// A registry of `default` plus `routes` (route segments → store).
    pub fn new(
        default: Arc<dyn Reads>,
        mut routes: Vec<(Vec<String>, Arc<dyn Reads>)>,
    ) -> Registry {
        routes.sort_by_key(|(segments, _)| std::cmp::Reverse(segments.len()));
        Registry { default, routes }
    }

    /// A registry of one store.
    pub fn single(store: Arc<dyn Reads>) -> Registry {
        Registry::new(store, Vec::new())
    }

    /// The reads of the store that holds `repo`.
    pub fn route(&self, repo: &RepoName) -> &dyn Reads {
        let name: Vec<&str> = repo.as_str().split('/').collect();
        self.routes
            .iter()
            .find(|(route, _)| {
                route.len() < name.len() && route.iter().zip(&name).all(|(r, n)| r == n)
            })
            .map_or(&*self.default, |(_, store)| &**store)
    }

    /// Every store: the default first, then the routed ones.
    pub fn stores(&self) -> impl Iterator<Item = &Store> {
        self.stores_by_route().map(|(_, store)| store)
    }

    /// Every store with its route's segments: none for the default store, then the routed
    /// ones (`["a", "b"]` for the `subPaths` route `/a/b`).
    pub fn stores_by_route(&self) -> impl Iterator<Item = (&[String], &Store)> {
        std::iter::once((&[][..], self.default.store())).chain(
            self.routes
                .iter()
                .map(|(segments, reads)| (segments.as_slice(), reads.store())),
        )
    }

    /// Up to `limit` repositories after `after` (all when `None`), sorted, from every store,
    /// and whether more follow. A repository found in a store that its name does not route to
    /// (a directory under the default root shadowed by a route) cannot be reached, so it is
    /// not listed. Each store is asked for one page (plus one, to tell whether more follow),
    /// so a page costs O(stores x n log N).
    pub fn catalog_page(
        &self,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<(Vec<String>, bool), StoreError> {
        let mut all = Vec::new();
        for store in self.stores() {
            let mut from = after.map(str::to_string);
            let mut routed = 0;
            // Names shadowed by a route are skipped, so a store may need more than one ask.
            loop {
                let ask = limit.map(|n| n.saturating_add(1));
                let names = store.catalog_page(from.as_deref(), ask)?;
                let exhausted = names.is_empty() || ask.is_none_or(|n| names.len() < n);
                for name in &names {
                    let routed_here = name
                        .parse::<RepoName>()
                        .is_ok_and(|repo| std::ptr::eq(self.route(&repo).store(), store));
                    if routed_here {
                        all.push(name.clone());
                        routed += 1;
                    }
                }
                if exhausted || limit.is_some_and(|n| routed > n) {
                    break;
                }
                from = names.last().cloned();
            }
        }
        all.sort();
        all.dedup();
        let more = limit.is_some_and(|n| all.len() > n);
        if let Some(n) = limit {
            all.truncate(n);
        }
        Ok((all, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::driver::local::{LocalDriver, WriterChoice};

    fn store(dir: &std::path::Path, name: &str) -> Arc<Store> {
        let driver = LocalDriver::new(dir.join(name), false, WriterChoice::Buffered).unwrap();
        Arc::new(Store::new(Arc::new(driver), None))
    }

    #[test]
    fn a_repository_goes_to_its_longest_route_by_whole_segments() {
        let dir = tempfile::tempdir().unwrap();
        let default = store(dir.path(), "default");
        let a = store(dir.path(), "a");
        let b = store(dir.path(), "b");
        let bc = store(dir.path(), "bc");
        let segments = |route: &str| route.split('/').map(String::from).collect::<Vec<_>>();
        let registry = Registry::new(
            Arc::clone(&default) as Arc<dyn Reads>,
            vec![
                (segments("b"), Arc::clone(&b) as Arc<dyn Reads>),
                (segments("a"), Arc::clone(&a) as Arc<dyn Reads>),
                (segments("b/c"), Arc::clone(&bc) as Arc<dyn Reads>),
            ],
        );
        let cases = [
            ("a/x", &a),
            ("a/x/y", &a),
            ("b/c/x", &bc),
            ("b/c", &b),
            ("b/x", &b),
            // zot: a one-segment name is in the default store, and segments match whole.
            ("a", &default),
            ("ab/x", &default),
            ("x/a/y", &default),
        ];
        for (name, want) in cases {
            let repo: RepoName = name.parse().unwrap();
            assert!(
                std::ptr::eq(registry.route(&repo).store(), &**want),
                "{name} routed to the wrong store"
            );
        }
    }
}
