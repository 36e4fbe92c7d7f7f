"""The admin panel in a real browser against the real server.

Each test signs in through the sign-in page as an admin of some role and works the page the way a
person would: by labels and button names, with the keyboard where it matters. Scenarios that need
an endpoint the server does not offer yet are skipped with the endpoint named.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from panel_support import DEMO_USERS, PASSWORD, email_of, run_cli

PHONE = {"width": 390, "height": 844}


def rows(page):
    return page.locator("#users-table tbody tr")


def wait_loaded(page):
    expect(page.locator("#page-status")).not_to_have_text(re.compile("Loading"))


def test_wrong_password_is_refused_and_the_right_one_signs_in(browser, server):
    context = browser.new_context(base_url=server.url)
    page = context.new_page()
    page.goto("/users")
    # Signed out, every panel page sends the browser to sign-in and remembers where it was going.
    page.wait_for_url(re.compile(r"/sign-in\?next=%2Fusers"))
    page.get_by_label("E-mail address").fill(email_of("owner"))
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.locator("#signin-error")).to_have_text("Wrong e-mail address or password.")
    expect(page.get_by_label("Password")).to_have_value("")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Password").press("Enter")
    page.wait_for_url("**/users")
    expect(page.locator("#whoami")).to_contain_text("owner@acme.test")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/sign-in")
    page.goto("/users")
    page.wait_for_url(re.compile("/sign-in"))
    context.close()


def test_users_table_pages_searches_filters_and_selects(as_role, server, screenshot_dir):
    page = as_role("owner")
    wait_loaded(page)
    expect(rows(page)).to_have_count(25)
    page.screenshot(path=str(screenshot_dir / "users.png"), full_page=True)

    # Cursor paging forwards and back.
    next_button = page.get_by_role("button", name="Next")
    expect(next_button).to_be_enabled()
    first_page = rows(page).first.get_attribute("data-id")
    next_button.click()
    expect(page.locator("#page-number")).to_have_text("Page 2")
    expect(rows(page)).to_have_count(DEMO_USERS - 25)
    expect(next_button).to_be_disabled()
    page.get_by_role("button", name="Previous").click()
    expect(page.locator("#page-number")).to_have_text("Page 1")
    expect(rows(page).first).to_have_attribute("data-id", first_page)

    # Select-all selects the page; the action bar follows the selection.
    expect(page.get_by_role("button", name="Assign key")).to_be_disabled()
    page.get_by_label("Select all users on this page").check()
    expect(page.locator("#selected-count")).to_have_text("25 selected")
    expect(page.get_by_role("button", name="Assign key")).to_be_enabled()
    page.get_by_label("Select Demo User 03").uncheck()
    expect(page.locator("#selected-count")).to_have_text("24 selected")
    expect(page.get_by_label("Select all users on this page")).not_to_be_checked()
    page.get_by_label("Select all users on this page").check()
    expect(page.locator("#selected-count")).to_have_text("25 selected")
    page.get_by_label("Select all users on this page").uncheck()
    expect(page.locator("#selected-count")).to_have_text("0 selected")

    # Search narrows by name, UPN or e-mail, and the query lands in the address for bookmarks.
    page.get_by_label("Search").fill("user-07")
    page.get_by_label("Search").press("Enter")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("Demo User 07")
    assert "q=user-07" in page.url
    page.get_by_label("Search").fill("nobody-like-this")
    page.get_by_role("button", name="Search").click()
    expect(rows(page)).to_have_count(0)
    expect(page.locator("#users-empty")).to_be_visible()

    # The source filter: every demo user came through the API, none from Entra ID.
    page.get_by_label("Search").fill("")
    page.get_by_label("Source").select_option("entra")
    expect(page.locator("#users-empty")).to_be_visible()
    page.get_by_label("Source").select_option("api")
    expect(rows(page)).to_have_count(25)
    assert not page.problems.items, page.problems.items


def test_assign_key_and_status_filter(as_role, server):
    page = as_role("admin")
    wait_loaded(page)
    page.get_by_label("Search").fill("user-1")
    page.get_by_label("Search").press("Enter")
    expect(rows(page)).to_have_count(10)
    page.get_by_label("Select Demo User 11").check()
    page.get_by_label("Select Demo User 12").check()
    page.get_by_role("button", name="Assign key").click()
    expect(page.locator("#page-status")).to_have_text("Assigning keys: 2 done.")
    for name in ("Demo User 11", "Demo User 12"):
        row = rows(page).filter(has_text=name)
        expect(row).to_contain_text("assigned")
        expect(row).to_contain_text("Assigned")
    page.get_by_label("Search").fill("")
    page.get_by_label("Status").select_option("assigned")
    expect(rows(page)).to_have_count(2)
    status, listed = server.api("GET", "/users?status=assigned")
    assert status == 200 and {u["upn"] for u in listed["items"]} == {"user-11@acme.test", "user-12@acme.test"}
    assert not page.problems.items, page.problems.items


def test_user_details_show_profile_key_and_a_one_time_activation_code(as_role, server, screenshot_dir):
    page = as_role("owner")
    user = server.users[20]
    status, _ = server.api("POST", f"/users/{user['id']}/key", {})
    assert status in (201, 409), status
    page.goto(f"/users/{user['id']}")
    expect(page.get_by_role("heading", level=1)).to_have_text("User details: Demo User 20")
    profile = page.locator("#profile")
    expect(profile).to_contain_text("user-20@acme.test")
    expect(profile).to_contain_text("api")
    expect(page.locator("#key")).to_contain_text("PIN")
    expect(page.locator("#credentials-empty")).to_be_visible()
    # The admin's actions are on the page's history.
    expect(page.locator("#history tbody tr").first).to_be_visible()

    page.get_by_role("button", name="Create activation code").click()
    code = page.locator("#activation-output .secret-value")
    expect(code).not_to_be_empty()
    expect(page.locator("#activation-output")).to_contain_text("Shown once")
    page.screenshot(path=str(screenshot_dir / "user.png"), full_page=True)
    value = code.inner_text()
    # Shown once: a reload forgets it, and nothing of it is kept in the browser's storage.
    page.reload()
    expect(page.locator("#activation-output")).to_be_hidden()
    stored = page.evaluate("JSON.stringify(Object.assign({}, localStorage, sessionStorage))")
    assert value not in stored
    assert not page.problems.items, page.problems.items


def test_provisioning_dialog_opens_closes_and_reports_a_refusal_in_place(as_role, server, screenshot_dir):
    status, _ = server.api("POST", "/provisioning", {})
    if status == 404:
        pytest.skip("the server offers no POST /api/v1/provisioning yet")
    status, dirs = server.api("GET", "/directories")
    if status != 200 or dirs:
        pytest.skip("needs an organisation without a directory connection")
    page = as_role("admin")
    wait_loaded(page)
    page.get_by_label("Select Demo User 01").check()
    page.get_by_label("Select Demo User 02").check()
    page.get_by_role("button", name="Automated RP Provisioning").click()
    dialog = page.get_by_role("dialog", name="Automated RP Provisioning")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_label("Microsoft (Entra ID)")).to_be_checked()
    expect(dialog).to_contain_text("2 users selected")
    page.screenshot(path=str(screenshot_dir / "provisioning-dialog.png"))
    # Escape closes the dialog without doing anything.
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    page.get_by_role("button", name="Automated RP Provisioning").click()
    dialog.get_by_role("button", name="Submit").click()
    # No Entra connection exists yet: the server's reason shows in the dialog, which stays open.
    expect(dialog.get_by_role("alert")).to_contain_text("directory")
    expect(dialog).to_be_visible()
    expect(page.locator("#job")).to_be_hidden()
    assert not page.problems.items, page.problems.items


def test_helpdesk_sees_users_and_connect_but_no_bulk_actions_or_settings(as_role, server):
    page = as_role("helpdesk")
    wait_loaded(page)
    expect(rows(page)).to_have_count(25)
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Users")).to_be_visible()
    for hidden in ("Settings", "Admins and roles", "Audit log"):
        expect(nav.get_by_role("link", name=hidden)).to_be_hidden()
    for button in ("Assign key", "Automated RP Provisioning", "Disable"):
        expect(page.get_by_role("button", name=button)).to_be_hidden()
    expect(page.locator("#users-table tbody input[type=checkbox]")).to_have_count(0)
    page.goto(f"/users/{server.users[5]['id']}")
    expect(page.get_by_role("button", name="Connect to register passkeys")).to_be_visible()
    expect(page.get_by_role("button", name="Create activation code")).to_be_visible()
    expect(page.get_by_role("button", name="Create a Temporary Access Pass")).to_be_hidden()
    expect(page.get_by_role("button", name="Assign key")).to_be_hidden()
    # The page is hidden, and the server refuses the data anyway.
    page.goto("/settings")
    expect(page.locator("#page-status")).to_have_text("Your role does not allow this page.")
    expect(page.locator("#settings-form")).to_be_hidden()
    assert not page.problems.items, page.problems.items


def test_auditor_reads_everything_and_changes_nothing(as_role, server, screenshot_dir):
    page = as_role("auditor")
    wait_loaded(page)
    for button in ("Assign key", "Automated RP Provisioning", "Disable"):
        expect(page.get_by_role("button", name=button)).to_be_hidden()
    page.goto(f"/users/{server.users[5]['id']}")
    expect(page.locator("#profile")).to_contain_text("user-05@acme.test")
    for button in ("Connect to register passkeys", "Create activation code", "Create a Temporary Access Pass"):
        expect(page.get_by_role("button", name=button)).to_be_hidden()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit log").click()
    page.wait_for_url("**/audit")
    expect(page.locator("#audit tbody tr").first).to_be_visible()
    expect(page.locator("#audit tbody")).to_contain_text("auth.login")
    page.screenshot(path=str(screenshot_dir / "audit.png"))
    # The auditor cannot make the server write, whatever the page shows.
    token = run_cli(server.binary, server.env, "token", "create", "--email", email_of("auditor"), "--name", "t")
    status, problem = server.api("POST", f"/users/{server.users[6]['id']}/disable", {}, token=token)
    assert status == 403, (status, problem)
    assert not page.problems.items, page.problems.items


def test_audit_filters_and_csv_export(as_role, server):
    page = as_role("owner")
    page.goto("/audit")
    expect(page.locator("#audit tbody tr").first).to_be_visible()
    page.get_by_label("Action").fill("auth.login")
    page.get_by_role("button", name="Filter").click()
    actions = page.locator("#audit tbody tr td:nth-child(4)")
    expect(actions.first).to_have_text("auth.login")
    assert set(actions.all_inner_texts()) == {"auth.login"}
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Export CSV").click()
    download = download_info.value
    assert download.suggested_filename.startswith("keyward-audit-")
    text = open(download.path(), encoding="utf-8").read()
    lines = text.strip().splitlines()
    assert lines[0] == "seq,at,actor,action,target,detail,hash"
    assert len(lines) >= 2 and all(",auth.login," in line for line in lines[1:])
    assert not page.problems.items, page.problems.items


def test_every_page_renders_without_errors_on_a_laptop_and_a_phone(as_role, server, screenshot_dir):
    for viewport, suffix in (({"width": 1280, "height": 860}, ""), (PHONE, "-phone")):
        page = as_role("owner", viewport)
        for path, name in (("/users", "users"), ("/directories", "directories"), ("/admins", "admins"),
                           ("/audit", "audit"), ("/settings", "settings"),
                           (f"/users/{server.users[0]['id']}", "user")):
            page.goto(path)
            expect(page.get_by_role("heading", level=1)).to_be_visible()
            page.wait_for_load_state("networkidle")
            if suffix:
                page.screenshot(path=str(screenshot_dir / f"page-{name}{suffix}.png"))
            # Nothing is wider than the screen except inside the scrolling table wrappers.
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= viewport["width"] + 1, f"{path} overflows at {viewport['width']}px: {width}"
        # Pages whose endpoints the server lacks say so in their status line, not in errors.
        assert not [p for p in page.problems.items if "page error" in p], page.problems.items


def test_sign_in_page_is_keyboard_usable(browser, server, screenshot_dir):
    context = browser.new_context(base_url=server.url)
    page = context.new_page()
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto("/sign-in")
    page.screenshot(path=str(screenshot_dir / "sign-in.png"))
    # The e-mail field has focus on load; Tab reaches the password, Enter submits.
    expect(page.get_by_label("E-mail address")).to_be_focused()
    page.keyboard.type(email_of("auditor"))
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password")).to_be_focused()
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url("**/users")
    # Focus is visible: the skip link is the first stop and shows itself.
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    box = skip.bounding_box()
    assert box and box["x"] >= 0, "the skip link is on screen when focused"
    assert not problems, problems
    context.close()


def test_entra_import_then_automated_provisioning_end_to_end(as_role, server, graph_sim, screenshot_dir):
    """Connect the simulated tenant, import its users, provision them all from the users page."""
    from panel_support import SIM_CLIENT, SIM_SECRET, SIM_TENANT, SIM_USERS

    if not server.offers("post", "/directories/entra") and server.api("GET", "/directories")[0] == 404:
        pytest.skip("the server offers no directories yet")
    page = as_role("owner")
    page.goto("/directories")
    form = page.locator("#entra-form")
    form.get_by_label("Name").fill("Contoso (simulated)")
    form.get_by_label("Tenant id").fill(SIM_TENANT)
    form.get_by_label("Application (client) id").fill(SIM_CLIENT)
    form.get_by_label("Client secret").fill(SIM_SECRET)
    form.get_by_text("National cloud or simulator").click()
    form.get_by_label("Authority URL").fill(graph_sim)
    form.get_by_label("Graph URL").fill(graph_sim)
    form.get_by_role("button", name="Save and test connection").click()
    result = page.locator("#directory-test")
    expect(result).to_contain_text("Test of Contoso (simulated)", timeout=20_000)
    # The secret is gone from the page once saved.
    expect(form.get_by_label("Client secret")).to_have_value("")
    row = page.locator("#directories tbody tr").filter(has_text="Contoso (simulated)")
    expect(row).to_contain_text("Never")
    page.screenshot(path=str(screenshot_dir / "directories.png"), full_page=True)

    row.get_by_role("button", name="Import users").click()
    expect(page.locator("#job-title")).to_have_text("Import from Contoso (simulated)")
    expect(page.locator("#job-counts")).to_have_text(re.compile(r"^done: "), timeout=60_000)
    expect(row).not_to_contain_text("Never")

    page.goto("/users?source=entra")
    wait_loaded(page)
    expect(rows(page)).to_have_count(SIM_USERS)
    page.get_by_label("Select all users on this page").check()
    expect(page.locator("#selected-count")).to_have_text(f"{SIM_USERS} selected")
    page.get_by_role("button", name="Automated RP Provisioning").click()
    dialog = page.get_by_role("dialog", name="Automated RP Provisioning")
    expect(dialog.get_by_label("Assign a security key to selected users who have none")).to_be_checked()
    dialog.get_by_role("button", name="Submit").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#job-title")).to_have_text("Microsoft automated provisioning")
    expect(page.locator("#job-bar")).to_be_visible()
    counts = page.locator("#job-counts")
    expect(counts).to_have_text(re.compile(rf"^(done|failed): {SIM_USERS} of {SIM_USERS} processed"),
                                timeout=120_000)
    page.screenshot(path=str(screenshot_dir / "provisioning-progress.png"), full_page=True)
    text = counts.inner_text()
    succeeded = int(re.search(r"(\d+) succeeded", text).group(1))
    failed = int(re.search(r"(\d+) failed", text).group(1))
    assert succeeded + failed == SIM_USERS
    assert succeeded >= 1, text
    # Every failure is listed with the reason Graph or Keyward gave, and can be retried.
    failures = page.locator("#job-items tbody tr[data-state=failed]")
    expect(failures).to_have_count(failed)
    for i in range(failed):
        assert failures.nth(i).locator("td").nth(2).inner_text().strip(), "a failure without a reason"
    if failed:
        expect(page.get_by_role("button", name="Retry failed")).to_be_visible()
    # The provisioned users now hold a passkey for Microsoft, recorded as automated.
    status, listed = server.api("GET", "/users?limit=200")
    entra = [u for u in listed["items"] if u["source"] == "entra"]
    with_passkey = 0
    for u in entra:
        _, creds = server.api("GET", f"/users/{u['id']}/credentials")
        with_passkey += sum(1 for c in creds["items"] if c["via"] == "automated")
    assert with_passkey == succeeded
    assert not page.problems.items, page.problems.items
