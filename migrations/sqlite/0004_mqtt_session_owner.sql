-- Who a session belongs to: the user id that created it, or 'anonymous'. Only that user may take a
-- persistent session over; a CONNECT of anyone else with its client id is refused.
ALTER TABLE mqtt_session ADD COLUMN owner TEXT NULL;
UPDATE mqtt_session SET owner = COALESCE(CAST(user_id AS TEXT), 'anonymous');
