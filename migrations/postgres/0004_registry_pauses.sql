-- A 429 pause per registry host, learnt by one replica and honoured by all. The end is the
-- database's clock (now() + the registry's Retry-After); replicas read the time left.
CREATE TABLE registry_pauses (
    registry     TEXT PRIMARY KEY,
    paused_until TIMESTAMPTZ NOT NULL
);
