// MonetizationOS endpoint workflow "Link Identities" (POST /link-identities,
// access level Secret Key), the default target of identity-link-worker.
//
// Request body: {"anonymousIdentifier": "...", "userIdentifier": "..."}
// Answers:
//   200 {"message":"Success","outcome":"created"}         a copy_once link was created
//   200 {"message":"Success","outcome":"already_linked"}  the anonymous identity already
//                                                         links to this user: nothing done
//   400 {"message":"..."}                                 missing or malformed fields
//                                                         (the worker dead-letters it as
//                                                         `rejected`, it never retries a 400)
// Any other failure (the platform call throws) surfaces as a 5xx, which the
// worker retries. The check-then-create is idempotent per (anonymous, user)
// pair, so the worker's at-least-once retries never create a duplicate link
// (the worker also never runs two calls for one anonymous identifier at once).
//
// Setup: deploy/monetizationos/README.md. When pasting into the editor, replace
// the import line below with the editor's own workflow-types import.
import type { EndpointWorkflow, IdentityLink } from "./workflow-types";

interface LinkIdentitiesPayload {
  anonymousIdentifier?: unknown;
  userIdentifier?: unknown;
}

export type LinkOutcome = "created" | "already_linked";

const REQUIRED_MESSAGE = "'anonymousIdentifier' and 'userIdentifier' are required";

function badRequest(message: string): Response {
  return Response.json({ message }, { status: 400 });
}

function success(outcome: LinkOutcome): Response {
  return Response.json({ message: "Success", outcome });
}

function isNonEmptyString(value: unknown): value is string {
  return typeof value === "string" && value.trim() !== "";
}

const linkIdentities: EndpointWorkflow = async ({ request, sdk }) => {
  let payload: unknown;
  try {
    payload = await request.json();
  } catch {
    return badRequest("the request body must be a JSON object");
  }
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
    return badRequest("the request body must be a JSON object");
  }

  const { anonymousIdentifier, userIdentifier } = payload as LinkIdentitiesPayload;
  if (!isNonEmptyString(anonymousIdentifier) || !isNonEmptyString(userIdentifier)) {
    return badRequest(REQUIRED_MESSAGE);
  }

  // Check first: links from this anonymous identity.
  const links: IdentityLink[] = await sdk.identityLinks.list({
    identifier: anonymousIdentifier,
    type: "anonymous",
  });

  // Already linked to this user: avoid a duplicate link between the two.
  if (links.some((link) => link.target.identifier === userIdentifier)) {
    return success("already_linked");
  }

  // Create only where none exists.
  await sdk.identityLinks.create({
    type: "copy_once",
    source: { identifier: anonymousIdentifier, type: "anonymous" },
    target: { identifier: userIdentifier, type: "authenticated" },
    reason: "conversion",
  });

  return success("created");
};

export default linkIdentities;
