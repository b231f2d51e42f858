SELECT c.id, c.name, c.email, c.phone, c.created_at, greatest(c.last_interaction_at, li.last) AS last_interaction_at
FROM crm_contacts c
LEFT JOIN LATERAL (SELECT max(interaction_date) AS last FROM crm_interactions WHERE contact_id = c.id) li ON true
WHERE c.lead_status = 'lead'
  AND (c.last_interaction_at <= $1 OR (c.last_interaction_at IS NULL AND c.created_at <= $1))
  AND coalesce(greatest(c.last_interaction_at, li.last), c.created_at) <= $1
ORDER BY c.id
