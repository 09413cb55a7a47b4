//! A PostgreSQL database of each test's own on the shared server
//! (`POSTBOX_TEST_DATABASE_URL`, default 127.0.0.1:5432), created empty and
//! dropped when the test ends, pass or fail, so that tests run in parallel
//! without seeing each other's tables, locks or notifications.
//!
//! The database itself is the integration-test harness's
//! ([`postbox_tests::postgres::TestDatabase`], a dev-dependency), one copy
//! for every crate's tests. What this wrapper adds is the relay's: sessions
//! open through the relay's own connector ([`DatabaseConfig`]), so that they
//! carry its `application_name` and connect timeout as a relay's sessions
//! do, and a database with the outbox schema applied.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use postbox_relay::{DatabaseConfig, Schema, TableName};
use tokio_postgres::Client;

// Each test binary uses a different part of these too.
#[allow(unused_imports)]
pub use postbox_tests::postgres::{shared_url, with_database};

/// A database of one test's own on the shared server, dropped (with any
/// sessions still on it) when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    database: postbox_tests::postgres::TestDatabase,
}

impl TestDatabase {
    /// Creates `relay_test_<random>` on the shared server.
    pub async fn create() -> TestDatabase {
        TestDatabase {
            database: postbox_tests::postgres::TestDatabase::create(&shared_url()).await,
        }
    }

    /// Creates a test database with the default outbox schema.
    pub async fn initialised() -> TestDatabase {
        let db = TestDatabase::create().await;
        let mut client = db.connect().await;
        Schema::new(TableName::default())
            .apply(&mut client)
            .await
            .expect("init");
        db
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        self.database.name()
    }

    /// The URL of this database.
    pub fn url(&self) -> &str {
        self.database.url()
    }

    /// A new session on this database, through the relay's own connector.
    pub async fn connect(&self) -> Client {
        connect_url(self.url()).await
    }
}

/// A session on `url`, through the relay's own connector.
pub async fn connect_url(url: &str) -> Client {
    DatabaseConfig::from_url(url)
        .expect("a valid test database URL")
        .connect()
        .await
        .unwrap_or_else(|error| panic!("cannot connect to the test PostgreSQL: {error}"))
}
