//! `rmachine export|import`: an ssh machine's settings, host key pin and (optionally) client key material.
