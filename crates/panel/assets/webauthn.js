// Keyward panel: WebAuthn glue. The server sends ceremony options in WebAuthn's JSON forms
// (base64url for binary fields) and takes the credential back as its toJSON() form; this module
// converts both ways, with a fallback for browsers without the JSON helpers.

export function b64urlToBytes(s) {
  const b64 = s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

export function bytesToB64url(buf) {
  const bytes = new Uint8Array(buf);
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

const withIds = (list) => (list || []).map((c) => ({ ...c, id: b64urlToBytes(c.id) }));

/** PublicKeyCredentialCreationOptionsJSON → the options navigator.credentials.create() takes. */
export function creationOptions(json) {
  const pk = json.publicKey || json;
  if (typeof PublicKeyCredential.parseCreationOptionsFromJSON === "function") {
    return PublicKeyCredential.parseCreationOptionsFromJSON(pk);
  }
  return {
    ...pk,
    challenge: b64urlToBytes(pk.challenge),
    user: { ...pk.user, id: b64urlToBytes(pk.user.id) },
    excludeCredentials: withIds(pk.excludeCredentials),
  };
}

/** PublicKeyCredentialRequestOptionsJSON → the options navigator.credentials.get() takes. */
export function requestOptions(json) {
  const pk = json.publicKey || json;
  if (typeof PublicKeyCredential.parseRequestOptionsFromJSON === "function") {
    return PublicKeyCredential.parseRequestOptionsFromJSON(pk);
  }
  return { ...pk, challenge: b64urlToBytes(pk.challenge), allowCredentials: withIds(pk.allowCredentials) };
}

/** A PublicKeyCredential (from create() or get()) as RegistrationResponseJSON / AuthenticationResponseJSON. */
export function credentialJson(cred) {
  if (typeof cred.toJSON === "function") return cred.toJSON();
  const r = cred.response;
  const response = { clientDataJSON: bytesToB64url(r.clientDataJSON) };
  if (r.attestationObject) {
    response.attestationObject = bytesToB64url(r.attestationObject);
    response.transports = typeof r.getTransports === "function" ? r.getTransports() : [];
  } else {
    response.authenticatorData = bytesToB64url(r.authenticatorData);
    response.signature = bytesToB64url(r.signature);
    response.userHandle = r.userHandle ? bytesToB64url(r.userHandle) : null;
  }
  return {
    id: cred.id,
    rawId: bytesToB64url(cred.rawId),
    type: cred.type,
    authenticatorAttachment: cred.authenticatorAttachment || null,
    response,
    clientExtensionResults: cred.getClientExtensionResults(),
  };
}

/** A message for a failed or cancelled browser ceremony. */
export function ceremonyError(e, what) {
  if (e && e.name === "NotAllowedError") return `The ${what} was cancelled or timed out.`;
  if (e && e.name === "InvalidStateError") return "This authenticator already holds a passkey for your account.";
  return e;
}
