-- get-full: the admin reads one random existing customer, all 8 fields decrypted, plus one
-- audit row, in one synced transaction. pgbench variables key and records (-D).
\set n random(1, :records)
SET ROLE vault_admin;
WITH r AS (
  SELECT id,
    pgp_sym_decrypt(name, :key) AS name,
    pgp_sym_decrypt(email, :key) AS email,
    pgp_sym_decrypt(phone, :key) AS phone,
    pgp_sym_decrypt(address, :key) AS address,
    pgp_sym_decrypt(date_of_birth, :key) AS date_of_birth,
    pgp_sym_decrypt(ssn, :key) AS ssn,
    pgp_sym_decrypt(card_number, :key) AS card_number,
    pgp_sym_decrypt(notes, :key) AS notes
  FROM customers
  WHERE n = :n
),
a AS (
  INSERT INTO audit (subject, action, record_id, fields)
  SELECT 'bench-admin', 'read', r.id, 'name,email,phone,address,date_of_birth,ssn,card_number,notes'
  FROM r
)
SELECT * FROM r;
