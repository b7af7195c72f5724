#ifndef TENANTD_CREDIT_CREDIT_H
#define TENANTD_CREDIT_CREDIT_H
#include <stdint.h>

#include "core/router.h"
#include "db/db.h"

/*
 * Credits: each org's balance (public.credit_accounts, never below zero) and
 * its append-only ledger (public.credit_transactions; the balance always
 * equals the sum of the org's ledger). Routes /v1/credits...,
 * POST /v1/admin/orgs/{slug}/credits. init also starts the purge of expired
 * Idempotency-Keys (src/idem).
 */
extern const struct module credit_module;

/*
 * Narrow calls for other modules (jobs). Every balance change goes through
 * ONE SQL function of migration 0006, which updates the account row and
 * appends the ledger row atomically; call it inside your own statement so
 * the charge commits with your effect (e.g. the job insert):
 *
 *   public.tenantd_credit_apply(org_id uuid, amount bigint, type text,
 *        job_id uuid DEFAULT NULL, description text DEFAULT NULL,
 *        reference text DEFAULT NULL) RETURNS public.credit_transactions
 *     amount signed: 'deduction' < 0 (job cost), 'refund' > 0, 'grant' > 0,
 *     'spend' < 0, 'adjustment' either. Raises CREDIT_SQLSTATE_INSUFFICIENT
 *     when the balance would go below zero (nothing changes; your statement
 *     rolls back with it), 22023 for a bad amount/type, 23505 for a second
 *     'deduction' or 'refund' with one job_id (unique indexes).
 *   public.tenantd_credit_refund_job(org_id uuid, job_id uuid,
 *        description text DEFAULT NULL) RETURNS public.credit_transactions
 *     adds back exactly what the job's 'deduction' took, once; NULL (id IS
 *     NULL) when the job was never charged or is refunded already.
 *   public.tenantd_credit_tx_json(public.credit_transactions) RETURNS json
 *     the API's Transaction resource.
 *
 * E.g. WITH t AS (SELECT * FROM public.tenantd_credit_apply($1::uuid,
 * -$2::bigint, 'deduction', $3::uuid, 'job ' || $4)) INSERT INTO public.jobs
 * ... SELECT ... FROM t RETURNING ...
 */
#define CREDIT_SQLSTATE_INSUFFICIENT "TD402"

#endif
