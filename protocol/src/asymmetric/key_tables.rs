//! The public keys' precomputed tables (the Wasm filter's P-256 and Ed25519 ones),
//! made when a key first verifies, not when it is read: a key directory may publish
//! many keys (up to 64 a document) and refresh them often, and a document refused
//! whole must cost nothing. Each table is made once per process (per Wasm VM) for as
//! long as some key holds it: a key read again (the next refresh of its directory, a
//! configuration pushed again) takes the one it has.

use std::sync::{Arc, Mutex, OnceLock, Weak};

/// The tables some key holds, by the key's encoding.
pub struct InUse<T> {
    tables: Mutex<Vec<(Vec<u8>, Weak<T>)>>,
}

impl<T> InUse<T> {
    pub const fn new() -> Self {
        InUse { tables: Mutex::new(Vec::new()) }
    }

    /// The table of the key encoded as `key`: the one in use, else `make`'s.
    pub fn table_of(&self, key: &[u8], make: impl FnOnce() -> Option<T>) -> Option<Arc<T>> {
        let mut tables = self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tables.retain(|(_, table)| table.strong_count() > 0);
        if let Some(table) = tables.iter().find(|(bytes, _)| bytes.as_slice() == key).and_then(|(_, table)| table.upgrade()) {
            return Some(table);
        }
        let table = Arc::new(make()?);
        tables.push((key.to_vec(), Arc::downgrade(&table)));
        Some(table)
    }
}

/// One key's table, made on its first use and shared by the key's clones.
pub struct LazyTable<T>(Arc<OnceLock<Option<Arc<T>>>>);

impl<T> LazyTable<T> {
    pub fn new() -> Self {
        LazyTable(Arc::new(OnceLock::new()))
    }

    /// The table, made now if it is not yet; `None` if it cannot be made.
    pub fn get(&self, make: impl FnOnce() -> Option<Arc<T>>) -> Option<&Arc<T>> {
        self.0.get_or_init(make).as_ref()
    }
}

impl<T> Clone for LazyTable<T> {
    fn clone(&self) -> Self {
        LazyTable(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_key_read_again_takes_the_table_in_use_until_none_holds_it() {
        static IN_USE: InUse<u32> = InUse::new();
        let made = std::cell::Cell::new(0);
        let make = || {
            made.set(made.get() + 1);
            Some(7)
        };
        let first = IN_USE.table_of(b"key", make).unwrap();
        let again = IN_USE.table_of(b"key", make).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(made.get(), 1);
        let other = IN_USE.table_of(b"other key", make).unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        drop((first, again));
        let _ = IN_USE.table_of(b"key", make).unwrap();
        assert_eq!(made.get(), 3, "made again once no key held it");
        assert!(IN_USE.table_of(b"none", || None).is_none());
    }

    #[test]
    fn a_lazy_table_is_made_on_first_use_once_for_all_clones() {
        let table: LazyTable<u32> = LazyTable::new();
        let clone = table.clone();
        let made = std::cell::Cell::new(0);
        let make = || {
            made.set(made.get() + 1);
            Some(Arc::new(5))
        };
        assert_eq!(made.get(), 0);
        assert_eq!(clone.get(make).map(|t| **t), Some(5));
        assert_eq!(table.get(make).map(|t| **t), Some(5));
        assert_eq!(made.get(), 1);
    }
}
