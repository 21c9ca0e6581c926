-- The gallery's database, exactly as SPEC section 2 gives it. facepipeline reads these tables and
-- writes only insightface_*, training_used and training_context of photo_faces, the rows of
-- face_training_sessions, and face_recognition_config. Used to create the embedded demo gallery
-- and the test database; a real Supabase project already has it.
create extension if not exists vector;
create table events (id uuid primary key default gen_random_uuid(), name text not null, date date not null, created_at timestamptz default now());
create table people (id uuid primary key default gen_random_uuid(), real_name text, telegram_name text, telegram_nickname text, created_at timestamptz default now());
create table photos (id uuid primary key default gen_random_uuid(), event_id uuid references events(id) on delete cascade, storage_path text not null, url text not null, width integer, height integer, created_at timestamptz default now());
create table photo_faces (
  id uuid primary key default gen_random_uuid(),
  photo_id uuid not null references photos(id) on delete cascade,
  person_id uuid references people(id) on delete set null,
  bbox jsonb not null,                 -- {"x": 100, "y": 200, "width": 150, "height": 150}, pixels of the original photo
  descriptor vector(128),              -- legacy face-api descriptor: ignore
  confidence real,
  verified boolean default false,
  created_at timestamptz default now(),
  insightface_descriptor vector(512),  -- written by facepipeline
  insightface_confidence real,         -- written by facepipeline (detector score)
  insightface_bbox jsonb,              -- written by facepipeline (the detected box it used)
  training_used boolean default false, -- set true once a face went into a training run
  training_context jsonb               -- e.g. {"event_id": "...", "co_occurring_people": [...], "training_session_id": "..."}
);
create table face_training_sessions (id uuid primary key default gen_random_uuid(), created_at timestamptz default now(), model_version text, training_mode text, faces_count integer, people_count integer, context_weight real, min_faces_per_person integer, metrics jsonb, status text);
create table face_recognition_config (id uuid primary key default gen_random_uuid(), key text unique not null, value jsonb not null, updated_at timestamptz default now());

-- The initial config rows (SPEC section 2), and facepipeline's data_levels: the face counts from
-- which a person counts as medium_data and high_data (a gallery without the row gets these defaults).
insert into face_recognition_config (key, value) values
  ('confidence_thresholds', '{"low_data": 0.75, "medium_data": 0.65, "high_data": 0.55}'),
  ('context_weight', '0.1'),
  ('min_faces_per_person', '3'),
  ('auto_retrain_threshold', '25'),
  ('auto_retrain_percentage', '0.1'),
  ('data_levels', '{"medium_data": 5, "high_data": 10}'),
  ('regression_tolerance', '0.02');
