//! A short-lived cache of enrollment groups for the enrollment and renewal paths.
//!
//! An attested enrollment reads its group twice (the challenge, then the enrollment) and a
//! renewal of a grouped device once more: three store round trips per device for a record
//! that changes rarely. Here a group read from the store is kept for `ttl`; a change made
//! through this node ([`GroupCache::forget`]) takes effect at once, and a change made
//! elsewhere (another replica, the CLI on the same database) within `ttl`. A `ttl` of zero
//! turns the cache off. Only groups that exist are kept: a group created anywhere is seen
//! by the next request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use devid_core::Clock;
use devid_store::{GroupRecord, Store, StoreError};

/// The most groups kept; past it, expired entries go first, then all (a deployment has a
/// handful of groups; the bound only keeps a flood of names from growing the map).
const MAX_ENTRIES: usize = 4096;

pub(crate) struct GroupCache {
    ttl_ms: i64,
    entries: RwLock<HashMap<String, Entry>>,
    /// Bumped by every [`GroupCache::forget`]: a group read from the store before a change
    /// made here is not kept (it may predate the change).
    generation: AtomicU64,
}

struct Entry {
    until_ms: i64,
    group: Arc<GroupRecord>,
}

impl GroupCache {
    pub(crate) fn new(ttl_ms: i64) -> GroupCache {
        GroupCache {
            ttl_ms: ttl_ms.max(0),
            entries: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// The group `name`: from the cache while fresh, else from the store.
    pub(crate) async fn get(
        &self,
        store: &dyn Store,
        clock: &dyn Clock,
        name: &str,
    ) -> Result<Option<Arc<GroupRecord>>, StoreError> {
        if self.ttl_ms == 0 {
            return Ok(store.get_group(name).await?.map(Arc::new));
        }
        let now = now_ms(clock);
        if let Ok(entries) = self.entries.read()
            && let Some(e) = entries.get(name)
            && now < e.until_ms
        {
            return Ok(Some(e.group.clone()));
        }
        let generation = self.generation.load(Ordering::Acquire);
        let fetched = store.get_group(name).await?.map(Arc::new);
        if let Some(group) = &fetched
            && let Ok(mut entries) = self.entries.write()
            && self.generation.load(Ordering::Acquire) == generation
        {
            if entries.len() >= MAX_ENTRIES {
                entries.retain(|_, e| now < e.until_ms);
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
            }
            entries.insert(
                name.to_string(),
                Entry { until_ms: now.saturating_add(self.ttl_ms), group: group.clone() },
            );
        }
        Ok(fetched)
    }

    /// Drop `name` after this node changed or deleted it.
    pub(crate) fn forget(&self, name: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut entries) = self.entries.write() {
            entries.remove(name);
        }
    }
}

fn now_ms(clock: &dyn Clock) -> i64 {
    clock.now_ms().unwrap_or_else(|| clock.now().0.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use devid_core::{FixedClock, UnixTime};

    fn group(name: &str, validity_secs: Option<i64>) -> GroupRecord {
        GroupRecord {
            name: name.into(),
            methods: vec!["token".into()],
            registration: "required".into(),
            id_source: "subject-cn".into(),
            validity_secs,
            trust_anchors: Vec::new(),
            crls: Vec::new(),
            master_key: None,
            rate_per_minute: None,
            created_at: UnixTime(1_000),
            updated_at: UnixTime(1_000),
        }
    }

    async fn put(store: &dyn Store, g: &GroupRecord) {
        let audit = crate::audit::event(
            UnixTime(1_000),
            &crate::Actor::System,
            "group.put",
            &g.name,
            serde_json::json!({}),
        );
        store.put_group(g, true, &audit).await.expect("put_group");
    }

    /// A change made behind the node's back shows after the time to live; one made through
    /// it (`forget`) at once; with a zero time to live, every read goes to the store.
    #[tokio::test]
    async fn keeps_a_group_for_its_time_to_live() {
        let store = devid_store::connect("sqlite::memory:").await.expect("store");
        let clock = FixedClock::new(UnixTime(10_000));
        let cache = GroupCache::new(2_000);
        assert!(cache.get(store.as_ref(), &clock, "line-1").await.expect("get").is_none());
        put(store.as_ref(), &group("line-1", Some(60))).await;
        // Not cached while missing: a new group is seen at once.
        let g = cache.get(store.as_ref(), &clock, "line-1").await.expect("get").expect("exists");
        assert_eq!(g.validity_secs, Some(60));
        put(store.as_ref(), &group("line-1", Some(120))).await;
        clock.advance(1);
        let g = cache.get(store.as_ref(), &clock, "line-1").await.expect("get").expect("exists");
        assert_eq!(g.validity_secs, Some(60), "still within the time to live");
        clock.advance(1);
        let g = cache.get(store.as_ref(), &clock, "line-1").await.expect("get").expect("exists");
        assert_eq!(g.validity_secs, Some(120), "read again after the time to live");
        put(store.as_ref(), &group("line-1", Some(180))).await;
        cache.forget("line-1");
        let g = cache.get(store.as_ref(), &clock, "line-1").await.expect("get").expect("exists");
        assert_eq!(g.validity_secs, Some(180), "a change made through this node shows at once");

        let off = GroupCache::new(0);
        assert_eq!(
            off.get(store.as_ref(), &clock, "line-1").await.expect("get").expect("exists").validity_secs,
            Some(180)
        );
        put(store.as_ref(), &group("line-1", Some(240))).await;
        assert_eq!(
            off.get(store.as_ref(), &clock, "line-1").await.expect("get").expect("exists").validity_secs,
            Some(240)
        );
    }
}
