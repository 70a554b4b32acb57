-- Dependent devices: microcontrollers that run no agent, carried by the
-- agent of a gateway device. A fleet has a class ('fleet', or 'dependent'
-- for a fleet of dependent devices) and, when dependent, the fleet of the
-- gateways that carry its devices; a dependent device has the gateway
-- device that carries it and its own identifier on its link. As in
-- 001_init.sql, none is 0 or '' (never NULL), without foreign keys: the
-- store refuses to delete a parent fleet or a gateway that still carries
-- devices. Written to port to PostgreSQL as it is.

-- +goose Up
ALTER TABLE fleets ADD COLUMN class TEXT NOT NULL DEFAULT 'fleet';
ALTER TABLE fleets ADD COLUMN parent_id INTEGER NOT NULL DEFAULT 0;
CREATE INDEX fleets_parent ON fleets (parent_id);

ALTER TABLE devices ADD COLUMN gateway_id INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN local_id TEXT NOT NULL DEFAULT '';
-- A gateway's dependent devices by name, as DependentDevices lists them.
CREATE INDEX devices_gateway ON devices (gateway_id, name, uuid);

-- +goose Down
DROP INDEX devices_gateway;
ALTER TABLE devices DROP COLUMN local_id;
ALTER TABLE devices DROP COLUMN gateway_id;
DROP INDEX fleets_parent;
ALTER TABLE fleets DROP COLUMN parent_id;
ALTER TABLE fleets DROP COLUMN class;
