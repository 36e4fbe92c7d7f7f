//! The page shells. Each is complete, labelled HTML with empty regions that `app.js` fills from the
//! REST API; nothing here depends on who is asking, so a shell is safe to serve to anyone.
//!
//! Markers the script relies on (keep them in step with the `.js` files):
//! - `<body data-page="…">` names the page module to run;
//! - `data-requires="permission"` on anything a role may lack: the script hides it (the API refuses
//!   it anyway);
//! - element ids used by the page modules.

use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use crate::assets;

/// One page of the panel.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// The route, in axum's syntax.
    pub path: &'static str,
    /// The page-module name the script dispatches on (`<body data-page>`).
    pub id: &'static str,
    /// The document title, before " · Keyward".
    pub title: &'static str,
    /// The one `<h1>` of the page.
    pub heading: &'static str,
    /// Pages for signed-out visitors carry no navigation and never redirect to sign-in.
    pub public: bool,
}

/// Every page shell the panel serves.
pub static PAGES: &[Page] = &[
    Page {
        path: "/sign-in",
        id: "signin",
        title: "Sign in",
        heading: "Sign in to Keyward",
        public: true,
    },
    Page {
        path: "/setup",
        id: "setup",
        title: "Set up",
        heading: "Set up Keyward",
        public: true,
    },
    Page {
        path: "/users",
        id: "users",
        title: "Users",
        heading: "Security Key Management",
        public: false,
    },
    Page {
        path: "/users/{id}",
        id: "user",
        title: "User details",
        heading: "User details",
        public: false,
    },
    Page {
        path: "/directories",
        id: "directories",
        title: "Directories",
        heading: "Directories",
        public: false,
    },
    Page {
        path: "/admins",
        id: "admins",
        title: "Admins and roles",
        heading: "Admins and roles",
        public: false,
    },
    Page {
        path: "/audit",
        id: "audit",
        title: "Audit log",
        heading: "Audit log",
        public: false,
    },
    Page {
        path: "/settings",
        id: "settings",
        title: "Settings",
        heading: "Settings",
        public: false,
    },
    Page {
        path: "/account",
        id: "account",
        title: "My account",
        heading: "My account",
        public: false,
    },
];

/// The navigation: link, label and the permission the link needs.
const NAV: &[(&str, &str, &str)] = &[
    ("/users", "Users", "users.read"),
    ("/directories", "Directories", "directories.read"),
    ("/admins", "Admins and roles", "admins.read"),
    ("/audit", "Audit log", "audit.read"),
    ("/settings", "Settings", "settings.read"),
    // Every role reads users, so this is everyone: each admin manages their own passkeys.
    ("/account", "My account", "users.read"),
];

pub(crate) fn render(page: &Page) -> Response {
    let body = match page.id {
        "signin" => signin(),
        "setup" => setup(),
        "users" => users(),
        "user" => user(),
        "directories" => directories(),
        "admins" => admins(),
        "audit" => audit(),
        "account" => account(),
        _ => settings(),
    };
    // maud's own axum integration targets an older axum, so the markup goes out as plain Html.
    let mut response = Html(layout(page, body).into_string()).into_response();
    // The shells hold no data, but an HTML response should never be replayed from a shared cache
    // after sign-out; assets carry the long-lived caching instead.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn layout(page: &Page, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (page.title) " · Keyward" }
                link rel="icon" href=(assets::url("favicon.svg")) type="image/svg+xml";
                link rel="stylesheet" href=(assets::url("panel.css"));
                script type="module" src=(assets::url("app.js")) {}
            }
            body data-page=(page.id) data-public[page.public] {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/users" { "Keyward" }
                    @if !page.public {
                        nav aria-label="Main" {
                            ul {
                                @for (href, label, needs) in NAV {
                                    li { a href=(href) data-requires=(needs) data-nav=(href) { (label) } }
                                }
                            }
                        }
                        div.whoami {
                            span #whoami aria-live="polite" {}
                            button #sign-out type="button" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (page.heading) }
                    noscript { p.notice { "The Keyward panel needs JavaScript: it loads everything through the REST API." } }
                    p #page-status .status role="status" aria-live="polite" {}
                    (main)
                }
            }
        }
    }
}

fn signin() -> Markup {
    html! {
        form #signin-form .card autocomplete="on" {
            p #signin-error .error role="alert" {}
            div.field {
                label for="signin-email" { "E-mail address" }
                input #signin-email name="email" type="email" autocomplete="username" required;
            }
            div.field {
                label for="signin-password" { "Password" }
                input #signin-password name="password" type="password" autocomplete="current-password" required;
            }
            details {
                summary { "Several organisations?" }
                div.field {
                    label for="signin-org" { "Organisation" }
                    input #signin-org name="org" type="text" autocomplete="organization";
                    p.hint { "Only needed when your e-mail address is an admin in more than one organisation." }
                }
            }
            button.primary type="submit" { "Sign in" }
        }
        div #passkey-signin .card hidden {
            p { "Admins who registered a passkey can use it instead of a password." }
            button #passkey-button type="button" { "Sign in with a passkey" }
        }
    }
}

fn account() -> Markup {
    html! {
        section aria-labelledby="passkeys-title" {
            h2 #passkeys-title { "My passkeys" }
            p { "A passkey signs you in without your password: choose " strong { "Sign in with a passkey" }
                " on the sign-in page. Passkeys work at the address they were registered at." }
            div.table-wrap {
                table #passkeys aria-busy="true" {
                    caption.visually-hidden { "Your passkeys" }
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Registered" }
                        th scope="col" { "Last used" } th scope="col" { "Actions" }
                    } }
                    tbody {}
                }
            }
            p #passkeys-empty hidden { "You have no passkey yet." }
            form #passkey-form .card autocomplete="off" {
                p #passkey-error .error role="alert" {}
                div.field {
                    label for="passkey-name" { "Name of the new passkey" }
                    input #passkey-name name="name" type="text" maxlength="100" placeholder="Laptop";
                }
                div.actions { button.primary type="submit" { "Register a passkey" } }
            }
        }
    }
}

fn setup() -> Markup {
    html! {
        p { "Create the organisation and its first owner. This page works once, with the link that "
            code { "keyward serve" } " printed when it found no admin." }
        p #setup-done .notice hidden {
            "Set-up is done: this installation has an admin. "
            a href="/sign-in" { "Sign in" } "."
        }
        form #setup-form .card {
            p #setup-error .error role="alert" {}
            div.field {
                label for="setup-org" { "Organisation name" }
                input #setup-org name="org" type="text" autocomplete="organization" required;
            }
            div.field {
                label for="setup-email" { "Your e-mail address" }
                input #setup-email name="email" type="email" autocomplete="username" required;
            }
            div.field {
                label for="setup-password" { "Password" }
                input #setup-password name="password" type="password" autocomplete="new-password" minlength="12" required aria-describedby="setup-password-hint";
                p #setup-password-hint .hint { "At least 12 characters." }
            }
            div.field {
                label for="setup-confirm" { "Repeat the password" }
                input #setup-confirm name="confirm" type="password" autocomplete="new-password" minlength="12" required;
            }
            button.primary type="submit" { "Create the owner account" }
        }
    }
}

/// The one-time PIN dialog of the users and user pages (`pins.js`): a confirmation step (user page)
/// and the PIN(s), shown once, with copy and CSV download.
fn pin_dialog() -> Markup {
    html! {
        dialog #pin-dialog aria-labelledby="pin-title" {
            h2 #pin-title { "One-time PIN" }
            div #pin-confirm hidden {
                p #pin-confirm-text {}
                div.actions {
                    button #pin-cancel type="button" { "Cancel" }
                    button.primary #pin-set type="button" { "Yes, set a new PIN" }
                }
            }
            div #pin-result hidden {
                p #pin-instructions {
                    "Give the PIN to the user in person or by phone. The key refuses it until the user "
                    "changes it, the first time they use the key (their security key prompt asks for a new PIN)."
                }
                div #pin-list .secret aria-live="polite" {}
                p.hint { "Shown once: note it now. It cannot be displayed again." }
                div.actions {
                    button #pin-copy type="button" { "Copy" }
                    button #pin-download type="button" hidden { "Download CSV" }
                    button.primary #pin-close type="button" { "Done" }
                }
            }
        }
    }
}

/// The job progress region shared by the users, user and directories pages.
fn job_region() -> Markup {
    html! {
        section #job .job aria-labelledby="job-title" hidden {
            div.job-head {
                h2 #job-title { "Job" }
                button #job-close type="button" { "Hide" }
            }
            progress #job-bar max="1" value="0" aria-labelledby="job-title" {}
            p #job-counts aria-live="polite" {}
            div #job-tap .secret hidden {}
            table #job-items {
                caption.visually-hidden { "Result per user" }
                thead { tr { th scope="col" { "User" } th scope="col" { "State" } th scope="col" { "Reason" } } }
                tbody {}
            }
            div.actions {
                button #job-retry type="button" data-requires="provisioning" hidden { "Retry failed" }
                button #job-cancel type="button" data-requires="provisioning" hidden { "Cancel job" }
            }
        }
    }
}

fn users() -> Markup {
    html! {
        (job_region())
        h2 { "Users" }
        form #user-filters .filters role="search" {
            div.field {
                label for="filter-q" { "Search" }
                input #filter-q name="q" type="search" placeholder="Name, UPN or e-mail";
            }
            div.field {
                label for="filter-status" { "Status" }
                select #filter-status name="status" {
                    option value="" { "Any" }
                    @for s in ["new", "assigned", "active", "disabled"] { option value=(s) { (s) } }
                }
            }
            div.field {
                label for="filter-source" { "Source" }
                select #filter-source name="source" {
                    option value="" { "Any" }
                    option value="entra" { "Entra ID" }
                    option value="csv" { "CSV" }
                    option value="api" { "API" }
                }
            }
            button type="submit" { "Search" }
        }
        div.action-bar role="toolbar" aria-label="Actions on the selected users" {
            span #selected-count aria-live="polite" { "0 selected" }
            button #action-assign type="button" data-requires="keys.write" disabled { "Assign key" }
            button #action-provision type="button" data-requires="provisioning" disabled { "Automated RP Provisioning" }
            button #action-disable type="button" data-requires="users.write" disabled { "Disable" }
        }
        div.table-wrap {
            table #users-table {
                caption.visually-hidden { "Users of the organisation" }
                thead {
                    tr {
                        th scope="col" data-requires="bulk" {
                            input #select-all type="checkbox" aria-label="Select all users on this page";
                        }
                        th scope="col" { "Name" }
                        th scope="col" { "UPN" }
                        th scope="col" { "E-mail" }
                        th scope="col" { "Status" }
                        th scope="col" { "Source" }
                        th scope="col" { "Key" }
                    }
                }
                tbody {}
            }
        }
        p #users-empty hidden { "No users match." }
        nav.pager aria-label="Pages of users" {
            button #page-prev type="button" disabled { "Previous" }
            span #page-number { "Page 1" }
            button #page-next type="button" disabled { "Next" }
        }
        (pin_dialog())
        dialog #provision-dialog aria-labelledby="provision-title" {
            form #provision-form method="dialog" {
                h2 #provision-title { "Automated RP Provisioning" }
                p #provision-summary {}
                fieldset {
                    legend { "Relying party" }
                    label.choice { input type="radio" name="rp" value="microsoft" checked; " Microsoft (Entra ID)" }
                }
                label.choice {
                    input #provision-manual type="checkbox" name="manual";
                    " Manual: create a Temporary Access Pass and a delegated session instead of registering automatically"
                }
                label.choice {
                    input #provision-assign type="checkbox" name="assign_missing_keys" checked;
                    " Assign a security key to selected users who have none"
                }
                p #provision-error .error role="alert" {}
                div.actions {
                    button #provision-cancel type="button" value="cancel" { "Cancel" }
                    button.primary #provision-submit type="submit" value="submit" { "Submit" }
                }
            }
        }
    }
}

fn user() -> Markup {
    html! {
        p { a href="/users" { "← All users" } }
        (job_region())
        section aria-labelledby="profile-title" {
            h2 #profile-title { "Profile" }
            dl #profile .facts {}
        }
        section aria-labelledby="key-title" {
            h2 #key-title { "Security key" }
            dl #key .facts {}
            div.actions {
                button #key-assign type="button" data-requires="keys.write" hidden { "Assign key" }
                button #key-pin type="button" data-requires="pins" hidden { "Set one-time PIN" }
            }
            p.hint data-requires="pins" { "For a forgotten or blocked PIN: the key gets a new PIN, shown once, that the user must change at first use. Passkeys stay." }
        }
        (pin_dialog())
        section aria-labelledby="creds-title" {
            h2 #creds-title { "Passkeys" }
            div.table-wrap {
                table #credentials {
                    caption.visually-hidden { "Passkeys on this user's key" }
                    thead { tr {
                        th scope="col" { "Relying party" } th scope="col" { "User name" }
                        th scope="col" { "Created" } th scope="col" { "By" } th scope="col" { "How" }
                    } }
                    tbody {}
                }
            }
            p #credentials-empty hidden { "No passkeys yet." }
        }
        section #connect-section aria-labelledby="connect-title" data-requires="connect" {
            h2 #connect-title { "Connect to register passkeys" }
            p { "While connected, your paired " code { "keyward-pair" } " shows this user's key as a local security key that can only register new passkeys." }
            p #pair-state aria-live="polite" { "Checking your pairing tool…" }
            p #connect-state aria-live="polite" {}
            div.actions {
                button #connect type="button" { "Connect to register passkeys" }
                button #disconnect type="button" hidden { "Disconnect" }
            }
        }
        section aria-labelledby="activation-title" data-requires="activation" {
            h2 #activation-title { "Activation code" }
            p { "The user enters this code in " code { "keyward-pair activate" } " on their own PC. It is shown once." }
            div #activation-output .secret hidden aria-live="polite" {}
            div.actions { button #activation-create type="button" { "Create activation code" } }
        }
        section aria-labelledby="manual-title" data-requires="provisioning" {
            h2 #manual-title { "Microsoft: manual provisioning" }
            p { "Creates a Temporary Access Pass for this user in Entra ID, shown once, and starts a delegated session so you can sign in as the user and register the key through your pairing tool." }
            div.actions { button #manual-start type="button" { "Create a Temporary Access Pass" } }
        }
        section aria-labelledby="history-title" data-requires="audit.read" {
            h2 #history-title { "History" }
            div.table-wrap {
                table #history {
                    caption.visually-hidden { "Audit entries about this user" }
                    thead { tr {
                        th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Action" } th scope="col" { "Detail" }
                    } }
                    tbody {}
                }
            }
        }
    }
}

fn directories() -> Markup {
    html! {
        (job_region())
        section aria-labelledby="dirs-title" {
            h2 #dirs-title { "Connections" }
            div.table-wrap {
                table #directories {
                    caption.visually-hidden { "Directory connections" }
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Tenant" } th scope="col" { "Last import" }
                        th scope="col" { "Actions" }
                    } }
                    tbody {}
                }
            }
            p #directories-empty hidden { "No directory is connected yet." }
            div #directory-test .card hidden aria-live="polite" {}
        }
        section aria-labelledby="entra-title" data-requires="directories.write" {
            h2 #entra-title { "Import from Azure AD (Entra ID)" }
            p { "Register an app in Entra ID with the application permissions "
                code { "User.Read.All" } ", " code { "GroupMember.Read.All" } " and "
                code { "UserAuthMethod-Passkey.ReadWrite.All" } " (admin consent), then enter it here." }
            form #entra-form .card autocomplete="off" {
                p #entra-error .error role="alert" {}
                div.field { label for="entra-name" { "Name" } input #entra-name name="name" type="text" required; }
                div.field { label for="entra-tenant" { "Tenant id" } input #entra-tenant name="tenant_id" type="text" required; }
                div.field { label for="entra-client" { "Application (client) id" } input #entra-client name="client_id" type="text" required; }
                div.field {
                    label for="entra-secret" { "Client secret" }
                    input #entra-secret name="client_secret" type="password" autocomplete="off" required;
                }
                details {
                    summary { "National cloud or simulator" }
                    div.field { label for="entra-authority" { "Authority URL" } input #entra-authority name="authority_url" type="url" placeholder="https://login.microsoftonline.com"; }
                    div.field { label for="entra-graph" { "Graph URL" } input #entra-graph name="graph_url" type="url" placeholder="https://graph.microsoft.com"; }
                }
                div.actions { button.primary type="submit" { "Save and test connection" } }
            }
        }
    }
}

fn admins() -> Markup {
    html! {
        div.table-wrap {
            table #admins {
                caption.visually-hidden { "Admins of the organisation" }
                thead { tr {
                    th scope="col" { "E-mail" } th scope="col" { "Role" } th scope="col" { "Status" }
                    th scope="col" data-requires="admins.write" { "Actions" }
                } }
                tbody {}
            }
        }
        section aria-labelledby="roles-title" {
            h2 #roles-title { "Roles" }
            dl.facts {
                dt { "owner" } dd { "Everything, including admins and settings." }
                dt { "admin" } dd { "Users, keys, provisioning and connecting to keys." }
                dt { "helpdesk" } dd { "Views users and connects to keys for registration; no bulk jobs or settings." }
                dt { "auditor" } dd { "Reads everything, including the audit log; changes nothing." }
            }
        }
        section aria-labelledby="add-admin-title" data-requires="admins.write" {
            h2 #add-admin-title { "Add an admin" }
            form #admin-form .card autocomplete="off" {
                p #admin-error .error role="alert" {}
                div.field { label for="admin-email" { "E-mail address" } input #admin-email name="email" type="email" required; }
                div.field {
                    label for="admin-role" { "Role" }
                    select #admin-role name="role" {
                        @for r in ["admin", "helpdesk", "auditor", "owner"] { option value=(r) { (r) } }
                    }
                }
                div.field {
                    label for="admin-password" { "Initial password" }
                    input #admin-password name="password" type="password" autocomplete="new-password" minlength="12" required;
                }
                div.actions { button.primary type="submit" { "Add admin" } }
            }
        }
    }
}

fn audit() -> Markup {
    html! {
        form #audit-filters .filters role="search" {
            div.field { label for="audit-actor" { "Actor" } input #audit-actor name="actor" type="text" placeholder="admin:alice@example.com"; }
            div.field { label for="audit-user" { "User id" } input #audit-user name="user_id" type="text"; }
            div.field { label for="audit-action" { "Action" } input #audit-action name="action" type="text"; }
            div.field { label for="audit-since" { "Since" } input #audit-since name="since" type="datetime-local"; }
            button type="submit" { "Filter" }
            button #audit-export type="button" { "Export CSV" }
        }
        div.table-wrap {
            table #audit {
                caption.visually-hidden { "Audit log entries, newest first" }
                thead { tr {
                    th scope="col" { "Seq" } th scope="col" { "When" } th scope="col" { "Actor" }
                    th scope="col" { "Action" } th scope="col" { "Target" } th scope="col" { "Detail" }
                } }
                tbody {}
            }
        }
        p #audit-empty hidden { "No entries match." }
        nav.pager aria-label="Pages of audit entries" {
            button #audit-prev type="button" disabled { "Previous" }
            span #audit-page { "Page 1" }
            button #audit-next type="button" disabled { "Next" }
        }
    }
}

fn settings() -> Markup {
    html! {
        form #settings-form .card aria-describedby="settings-readonly" {
            p #settings-error .error role="alert" {}
            p #settings-readonly .hint hidden { "Only the organisation's owners can change these settings." }
            fieldset {
                legend { "Attestation of new credentials" }
                label.choice { input type="radio" name="attestation" value="packed"; " Packed, signed by this organisation's attestation CA" }
                label.choice { input type="radio" name="attestation" value="none"; " None (for RPs that only accept attestation they can check against FIDO MDS)" }
                details #settings-ca hidden {
                    summary { "Attestation CA certificate" }
                    p.hint { "Give it to relying parties that verify attestation." }
                    pre #settings-ca-pem {}
                }
            }
            div.field {
                label for="settings-aaguid" { "AAGUID of new keys" }
                input #settings-aaguid name="aaguid" type="text" required pattern="[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}" aria-describedby="aaguid-hint";
                p #aaguid-hint .hint { "A UUID. RPs with an AAGUID allow list (Entra key restrictions) must list it. Keys already assigned keep theirs." }
            }
            fieldset {
                legend { "PIN policy for new keys" }
                label.choice { input type="radio" name="pin_policy" value="user"; " The user sets a PIN when activating the key" }
                label.choice { input type="radio" name="pin_policy" value="admin_one_time"; " An admin gets a one-time PIN when assigning the key; the user must change it at first use" }
                p.hint { "One-time PINs are shown once, to the admin who assigns the key (at least 8 digits, or the minimum PIN length if longer); the key refuses them until the user chooses their own PIN." }
            }
            div.field {
                label for="settings-min-pin" { "Minimum PIN length of new keys" }
                input #settings-min-pin name="min_pin_length" type="number" required min="4" max="63";
            }
            div.field {
                label for="settings-session" { "Delegated session length (minutes)" }
                input #settings-session name="delegated_session_minutes" type="number" required min="1" max="15" aria-describedby="session-hint";
                p #session-hint .hint { "How long Connect to register passkeys lasts; at most 15 minutes." }
            }
            p #settings-updated .hint {}
            div.actions { button.primary type="submit" data-requires="settings.write" { "Save settings" } }
        }
    }
}
