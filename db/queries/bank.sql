-- bank.sql — the app-facing reads (study_embed.bank.Bank): the tenant-safe functions of
-- study_embed_app, for `study-embed search`, `check-duplicate` and the UI.  Every one takes the
-- user explicitly and returns nothing of another user's questions.
-- Loaded by study_embed.sqlfiles.queries(); one statement under each `-- name:` header,
-- named parameters.

-- name: search
SELECT id, similarity, question_text
FROM study_embed.search_questions(%(user_id)s, %(query)s, %(k)s, %(topic_id)s);

-- name: search_hybrid
SELECT id, similarity, question_text
FROM study_embed.search_questions_hybrid(%(user_id)s, %(query)s, %(text)s, %(k)s, %(topic_id)s);

-- name: find_duplicates
SELECT id, similarity, question_text
FROM study_embed.find_duplicates(%(user_id)s, %(query)s, %(threshold)s::real, %(answer)s);

-- name: render
SELECT study_embed.render_question(%(question_text)s, %(choice_1)s, %(choice_2)s, %(choice_3)s,
                                   %(choice_4)s);

-- name: bank_role
-- What the connected role may do (the UI refuses to run as an owner).  pg_has_role with
-- MEMBER: membership whether or not its rights are inherited.
SELECT current_user::text,
       r.rolsuper,
       pg_has_role(current_user, 'study_embed_pipeline', 'MEMBER'),
       pg_has_role(current_user, c.relowner, 'MEMBER'),
       pg_has_role(current_user, 'study_embed_app', 'USAGE'),
       has_table_privilege('public.users', 'SELECT')
           AND has_table_privilege('public.study_topics', 'SELECT')
           AND has_table_privilege('public.study_questions', 'SELECT')
           AND has_table_privilege('public.study_question_attempts', 'SELECT'),
       has_table_privilege('public.study_questions', 'INSERT, UPDATE, DELETE, TRUNCATE')
FROM pg_roles r, pg_class c
WHERE r.rolname = current_user AND c.oid = 'public.study_questions'::regclass;

-- name: bank_users
-- Users (all, or the one asked for) with the size of their bank.  The app's users table may
-- have a name or only an e-mail: read through to_jsonb so that either (or neither) works.
SELECT u.id,
       coalesce(to_jsonb(u) ->> 'name', to_jsonb(u) ->> 'email'),
       n.live, n.ready
FROM (SELECT * FROM public.users
      WHERE %(user_id)s::bigint IS NULL OR id = %(user_id)s::bigint
      ORDER BY id LIMIT %(limit)s) u
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE q.deleted_at IS NULL) AS live,
           count(*) FILTER (WHERE q.deleted_at IS NULL AND q.embedding_status = 'ready') AS ready
    FROM public.study_questions q WHERE q.user_id = u.id) n
ORDER BY u.id;

-- name: bank_question
-- One live question of one user (nothing for another user's id).
SELECT q.id, q.study_topic_id, to_jsonb(t) ->> 'name', q.question_text,
       q.choice_1, q.choice_2, q.choice_3, q.choice_4, q.correct_choice, q.explanation,
       q.embedding_status, q.embedding_model, q.embedding_updated_at
FROM public.study_questions q
LEFT JOIN public.study_topics t ON t.id = q.study_topic_id
WHERE q.id = %(question_id)s AND q.user_id = %(user_id)s AND q.deleted_at IS NULL;

-- name: bank_similar
SELECT id, similarity, question_text
FROM study_embed.similar_questions(%(user_id)s, %(question_id)s, %(k)s, %(same_topic)s);

-- name: bank_context
SELECT id, similarity, question_text, correct_choice, correct_answer, explanation,
       ai_explanation
FROM study_embed.explanation_context(%(user_id)s, %(question_id)s, %(k)s);

-- name: bank_duplicates
SELECT question_id, duplicate_of, similarity, question_text, duplicate_text
FROM study_embed.duplicate_pairs
WHERE user_id = %(user_id)s
ORDER BY similarity DESC, question_id, duplicate_of
LIMIT %(limit)s;

-- name: bank_dismiss
SELECT study_embed.dismiss_duplicate(%(user_id)s, %(question_id)s, %(duplicate_of)s);

-- name: bank_clusters
SELECT cluster, representative_id, question_id, similarity, question_text, last_wrong_at,
       cluster_name
FROM study_embed.wrong_answer_clusters(%(user_id)s, %(recent)s, %(threshold)s::real,
                                       %(word_weight)s::real);
