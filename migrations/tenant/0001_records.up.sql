-- An org's records, grouped in collections. Runs with search_path set to the
-- org's schema, so the names stay unqualified.
CREATE TABLE records (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    collection text NOT NULL,
    data       jsonb NOT NULL,
    version    bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Listing a collection newest first, with (created_at, id) as the cursor.
CREATE INDEX records_collection_created_idx ON records (collection, created_at DESC, id DESC);
-- Containment filters on data (data @> '{...}').
CREATE INDEX records_data_idx ON records USING gin (data jsonb_path_ops);
