//! Sticky bucketing: a key's bucket depends only on (salt, key), so the same key gets the same route on every
//! connection and every replica, and raising a percentage only adds keys (bucket < percent is monotone).

/// Buckets per 100%: one bucket is 0.01%.
pub const BUCKETS: u16 = 10_000;

/// The bucket of `key` for a migration's `salt`, in [0, 10000).
///
/// FNV-1a over `salt 0xff key`, then the splitmix64 finalizer so similar keys ("user1", "user2") spread
/// evenly. Both are fixed algorithms: the mapping never changes between builds, machines or replicas.
pub fn bucket(salt: &str, key: &str) -> u16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in salt.bytes().chain(std::iter::once(0xff)).chain(key.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h % u64::from(BUCKETS)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_values() {
        // Pinned: a change here would move live traffic between old and new on upgrade.
        assert_eq!(
            bucket("orders_status", "alice\0web"),
            bucket("orders_status", "alice\0web")
        );
        assert_eq!(bucket("m", "k"), 3805);
        assert_eq!(bucket("m", "k2"), 2642);
    }

    #[test]
    fn salt_reshuffles() {
        let moved = (0..1000)
            .filter(|i| bucket("a", &format!("user{i}")) != bucket("b", &format!("user{i}")))
            .count();
        assert!(moved > 990, "{moved}");
    }

    #[test]
    fn thousand_keys_at_25_percent_land_near_25_percent() {
        let new = (0..1000)
            .filter(|i| bucket("orders_status", &format!("user{i}")) < 2500)
            .count();
        assert!((220..=280).contains(&new), "{new} of 1000 routed to new");
    }

    #[test]
    fn raising_the_percentage_only_adds_keys() {
        let keys: Vec<String> = (0..2000).map(|i| format!("session-{i}")).collect();
        let at =
            |bp: u16| -> Vec<&String> { keys.iter().filter(|k| bucket("m", k) < bp).collect() };
        let (five, twenty_five) = (at(500), at(2500));
        assert!(five.iter().all(|k| twenty_five.contains(k)));
        assert!(twenty_five.len() > five.len());
    }
}
