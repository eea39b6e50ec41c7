//! The gateway's use cases, free of gRPC: what each call does once the caller is known and
//! the input is parsed. The API layer converts; this layer decides and calls the store.

use std::sync::Arc;

use crate::auth::Principal;
use crate::domain::saga::Command;
use crate::domain::{
    CaseEvent, CaseId, Deregistration, HsaId, NewDeregistration, State, Timestamp,
};
use crate::privacy::Vault;
use crate::storage::{CaseStore, CreateCase, Created, EventMeta, ListQuery, StoreError};

/// Errors of the use cases; `api::error` maps them to gRPC statuses in one place.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    PermissionDenied(String),
    #[error("deregistration not found")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug)]
pub struct Gateway {
    store: Arc<dyn CaseStore>,
    vault: Arc<Vault>,
}

/// A page of cases and the id to continue after, if there may be more.
#[derive(Debug)]
pub struct Page {
    pub cases: Vec<Deregistration>,
    pub last: Option<CaseId>,
}

impl Gateway {
    pub fn new(store: Arc<dyn CaseStore>, vault: Arc<Vault>) -> Self {
        Self { store, vault }
    }

    pub fn store(&self) -> &Arc<dyn CaseStore> {
        &self.store
    }

    pub async fn create(
        &self,
        principal: &Principal,
        request_id: Option<String>,
        report: NewDeregistration,
        trace_id: String,
    ) -> Result<Created, AppError> {
        if !principal.holds_unit(&report.care_unit) {
            return Err(AppError::PermissionDenied(format!(
                "principal {} holds no grant for care unit {}",
                principal.hsa_id, report.care_unit
            )));
        }
        let fingerprint = self.fingerprint(&report);
        let cmd = CreateCase {
            id: CaseId::new(),
            principal: principal.hsa_id.clone(),
            care_provider: principal.care_provider.clone(),
            request_id,
            fingerprint,
            report,
            meta: EventMeta {
                actor: principal.hsa_id.to_string(),
                trace_id,
                at: Timestamp::now(),
                detail: String::new(),
            },
        };
        Ok(self.store.create(cmd).await?)
    }

    /// A case of the caller's care provider; anyone else's is reported as not found, so
    /// case ids cannot be probed across providers.
    pub async fn get_own(
        &self,
        principal: &Principal,
        id: &CaseId,
    ) -> Result<Deregistration, AppError> {
        match self.store.get(id).await? {
            Some(c) if c.care_provider == principal.care_provider => Ok(c),
            _ => Err(AppError::NotFound),
        }
    }

    pub async fn list_own(
        &self,
        principal: &Principal,
        care_unit: Option<HsaId>,
        state: Option<State>,
        after: Option<CaseId>,
        limit: u32,
    ) -> Result<Page, AppError> {
        if let Some(unit) = &care_unit
            && !principal.holds_unit(unit)
        {
            return Err(AppError::PermissionDenied(format!(
                "principal {} holds no grant for care unit {unit}",
                principal.hsa_id
            )));
        }
        // One extra row tells whether another page exists without a count query.
        let mut cases = self
            .store
            .list(&ListQuery {
                care_provider: Some(principal.care_provider.clone()),
                care_unit,
                state,
                after,
                limit: limit + 1,
            })
            .await?;
        let more = cases.len() > limit as usize;
        cases.truncate(limit as usize);
        let last = if more {
            cases.last().map(|c| c.id.clone())
        } else {
            None
        };
        Ok(Page { cases, last })
    }

    pub async fn cancel(
        &self,
        principal: &Principal,
        id: &CaseId,
        reason: String,
        trace_id: String,
    ) -> Result<Deregistration, AppError> {
        let meta = EventMeta {
            actor: principal.hsa_id.to_string(),
            trace_id,
            at: Timestamp::now(),
            detail: reason,
        };
        match self
            .store
            .apply(id, Some(&principal.care_provider), &Command::Cancel, meta)
            .await
        {
            Err(StoreError::NotFound) => Err(AppError::NotFound),
            other => Ok(other?),
        }
    }

    pub async fn events(
        &self,
        principal: &Principal,
        id: &CaseId,
    ) -> Result<Vec<CaseEvent>, AppError> {
        self.get_own(principal, id).await?;
        Ok(self.store.events(id).await?)
    }

    /// Keyed digest of everything the caller sent, in a fixed order.
    fn fingerprint(&self, r: &NewDeregistration) -> String {
        let pnr = r.card_holder.personnummer.expose_digits();
        let received = r.card_received_at.0.to_string();
        self.vault.digest(&[
            r.care_unit.as_str().as_bytes(),
            pnr.as_bytes(),
            r.card_holder.full_name.as_str().as_bytes(),
            r.card_holder
                .email
                .as_ref()
                .map_or("", |e| e.as_str())
                .as_bytes(),
            r.card_number.as_str().as_bytes(),
            r.reason.as_str().as_bytes(),
            received.as_bytes(),
            r.reported_by.hsa_id.as_str().as_bytes(),
            r.reported_by.full_name.as_str().as_bytes(),
            r.reported_by.email.as_str().as_bytes(),
            r.route.as_str().as_bytes(),
        ])
    }
}
