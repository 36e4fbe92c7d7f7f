-- PIN policy `admin_one_time`: assigning a key sets a generated one-time PIN that the key forces
-- the user to change (CTAP forcePINChange). Keep in step with
-- migrations/sqlite/0700_pin_policy_admin_one_time.sql.

ALTER TABLE org_settings DROP CONSTRAINT org_settings_pin_policy_check;
ALTER TABLE org_settings ADD CONSTRAINT org_settings_pin_policy_check
    CHECK (pin_policy IN ('user', 'admin_one_time'));
