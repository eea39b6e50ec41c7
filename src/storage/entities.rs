//! sea-orm entities. Crate-private: nothing outside `storage` sees rows, only domain types.

pub(crate) mod cases {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "cases")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub care_provider_hsa_id: String,
        pub care_unit_hsa_id: String,
        pub card_number: String,
        pub active_card_number: Option<String>,
        pub holder_pseudonym: String,
        pub sensitive: Vec<u8>,
        pub reason: String,
        pub kiv_removal_route: String,
        pub card_received_at: i64,
        pub reporter_hsa_id: String,
        pub state: String,
        pub state_reason: Option<String>,
        pub revocation_reference: Option<String>,
        pub created_at: i64,
        pub updated_at: i64,
        pub version: i64,
        pub attention_from: Option<String>,
        pub snapshot_state: String,
        pub kiv_snapshot: Option<Vec<u8>>,
        pub reported_at: Option<i64>,
        pub revocation_confirmed_at: Option<i64>,
        pub trace_id: String,
        pub last_seq: i64,
        pub last_hash: String,
        pub head_notified_at: Option<i64>,
        /// W3C `traceparent` of the creating request (m0004); NULL for older cases.
        pub trace_parent: Option<String>,
        /// The case's data key, wrapped by the master key `key_id` (m0006); NULL for a row
        /// sealed by the master key itself (before m0006) and after shredding.
        pub data_key: Option<Vec<u8>>,
        pub key_id: Option<String>,
        /// When the case reached a terminal state (m0006).
        pub ended_at: Option<i64>,
        /// When its personal data was destroyed (m0006).
        pub shredded_at: Option<i64>,
        /// `audit::head_seal` of (`last_seq`, `last_hash`) (m0005); NULL until the case's first
        /// keyed event.
        pub head_seal: Option<String>,
        /// `saga::Verification` by name (m0009): `off` for every older case.
        pub revocation_check: String,
        /// The certificates the confirmation named, as JSON (m0009); serials and issuers only.
        pub revoked_certificates: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod case_events {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "case_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub case_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        pub kind: String,
        pub state: String,
        pub actor: String,
        pub occurred_at: i64,
        pub trace_id: String,
        pub detail: String,
        pub prev_hash: String,
        pub hash: String,
        /// The key that made `hash` (m0005); NULL for legacy, plain SHA-256 events.
        pub key_id: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod idempotency_keys {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "idempotency_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub principal_hsa_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub request_id: String,
        pub fingerprint: String,
        pub case_id: String,
        pub created_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod effects {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "effects")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        pub case_id: String,
        pub step: String,
        pub n: i64,
        pub due_at: i64,
        pub status: String,
        pub attempts: i64,
        pub lease_owner: Option<String>,
        pub lease_until: Option<i64>,
        pub last_error: Option<String>,
        pub created_at: i64,
        pub updated_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod retention_purges {
    use sea_orm::entity::prelude::*;

    /// The audited marker that lets one case's audit trail be deleted (m0006).
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "retention_purges")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub case_id: String,
        pub ended_at: i64,
        pub purged_at: i64,
        pub last_seq: i64,
        pub last_hash: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
