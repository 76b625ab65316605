//! Maps keyed by sequential ids: publish tokens we hand out, and stream
//! sequences, which the server hands out in order, so a multiply is enough
//! of a hash, and the default SipHash showed in profiles of the
//! publish and consume paths.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<SequentialIdHasher>>;

#[derive(Default)]
pub struct SequentialIdHasher(u64);

impl Hasher for SequentialIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8) | u64::from(*byte);
        }
        self.0 = spread(self.0);
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = spread(u64::from(id));
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = spread(id);
    }
}

/// Spreads sequential ids over the high bits too, which hashbrown uses to
/// filter probes.
fn spread(id: u64) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[cfg(test)]
mod tests {
    use super::IdMap;

    #[test]
    fn sequential_ids_insert_find_and_remove() {
        let mut map = IdMap::<u64, u64>::default();
        for id in 0..10_000u64 {
            map.insert(id, id * 2);
        }
        assert_eq!(map.get(&4_321), Some(&8_642));
        for id in (0..10_000u64).step_by(2) {
            assert_eq!(map.remove(&id), Some(id * 2));
        }
        assert_eq!(map.len(), 5_000);
        assert!(!map.contains_key(&0));
    }
}
