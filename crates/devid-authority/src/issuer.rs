use std::sync::Arc;

use devid_ca::profile::{IssuerInfo, LeafProfile, PublicUrls};
use devid_core::{CaId, KeyRef};
use devid_kms::{KeyManager, Signer};
use devid_store::{CaKind, Store};

use crate::{AuthorityConfig, AuthorityError};

/// The issuing CA in use: its certificate, its signer, the chain handed to devices and the
/// leaf profile built from the configuration.
pub struct ActiveIssuer {
    /// The CA's id in the store.
    pub id: CaId,
    /// The issuing CA certificate, DER.
    pub cert_der: Vec<u8>,
    /// The root certificate, DER.
    pub root_der: Vec<u8>,
    /// Facts the leaf builder needs.
    pub info: IssuerInfo,
    /// The leaf profile.
    pub profile: LeafProfile,
    /// `issuing\nroot` as PEM: what a device installs next to its certificate.
    pub chain_pem: String,
    pub(crate) signer: Arc<dyn Signer>,
}

impl std::fmt::Debug for ActiveIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveIssuer").field("id", &self.id).field("key", self.signer.key_ref()).finish()
    }
}

impl ActiveIssuer {
    /// Load the active issuing CA and its root from the store, and the issuing key from the
    /// key manager. The issuing key's public key must match the certificate.
    pub async fn load(
        store: &dyn Store,
        kms: &dyn KeyManager,
        config: &AuthorityConfig,
    ) -> Result<ActiveIssuer, AuthorityError> {
        let ca = store.active_ca(CaKind::Issuing).await?.ok_or(AuthorityError::NoCa)?;
        let root_id = ca
            .parent
            .clone()
            .ok_or_else(|| AuthorityError::Internal("issuing CA without a parent".into()))?;
        let root = store
            .get_ca(&root_id)
            .await?
            .ok_or_else(|| AuthorityError::Internal(format!("issuing CA's root {root_id} is missing")))?;
        let key_ref: KeyRef = ca
            .key_ref
            .as_deref()
            .ok_or_else(|| AuthorityError::Internal("the issuing CA has no key reference".into()))?
            .parse()
            .map_err(|e| AuthorityError::Internal(format!("issuing CA key reference: {e}")))?;
        let signer = kms.signer(&key_ref)?;
        let info = IssuerInfo::from_cert_der(&ca.cert_der)?;
        if info.spki_der != signer.public_key_spki_der() {
            return Err(AuthorityError::Internal(format!(
                "key {key_ref} does not match the issuing CA certificate {}",
                ca.id
            )));
        }
        let profile = LeafProfile {
            validity_secs: config.leaf_validity_secs,
            backdate_secs: config.backdate_secs,
            device_uri_prefix: config.device_uri_prefix.clone(),
            urls: PublicUrls::for_issuer(&config.public_url, &ca.id)
                .with_ocsp_base(config.ocsp_public_url.as_ref()),
            crl_shards: config.crl_shards.max(1),
        };
        let chain_pem = format!(
            "{}{}",
            devid_ca::to_pem("CERTIFICATE", &ca.cert_der),
            devid_ca::to_pem("CERTIFICATE", &root.cert_der)
        );
        Ok(ActiveIssuer {
            id: ca.id,
            cert_der: ca.cert_der,
            root_der: root.cert_der,
            info,
            profile,
            chain_pem,
            signer,
        })
    }
}
