// MonetizationOS Endpoint workflow "Link Identities" (POST /link-identities,
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
//   503 {"message":"..."}                                 reading or creating the link failed
//                                                         (the worker retries any 5xx)
//
// The platform calls (utils.identity, see workflow-types.d.ts for the pages
// each one comes from):
//   utils.identity.getLinkedTargets({ identifier: <anonymous>, userType: "anonymous" })
//   utils.identity.createLink({ strategy: "copy_once",
//                               source: { identifier: <anonymous>, userType: "anonymous" },
//                               target: { identifier: <user>, userType: "authenticated" },
//                               reason: "conversion" })
// The names the docs we could read do not confirm (createLink, strategy,
// reason, link.target) are listed in README.md, "What the docs leave open".
//
// Check-then-create is idempotent per (anonymous, user) pair when calls for
// one pair do not overlap, so the worker's at-least-once retries never create
// a duplicate link; the worker never runs two calls for one anonymous
// identifier at once. Two overlapping calls for one new pair could both
// create (README.md, Notes).
//
// Setup: deploy/monetizationos/README.md. When pasting into the editor, replace
// the import line below with the editor's own workflow-types import.
import type {
  CreateIdentityLinkArgs,
  EndpointWorkflow,
  WorkflowUserIdentifier,
} from "./workflow-types";

interface LinkIdentitiesPayload {
  anonymousIdentifier?: unknown;
  userIdentifier?: unknown;
}

export type LinkOutcome = "created" | "already_linked";

const REQUIRED_MESSAGE = "'anonymousIdentifier' and 'userIdentifier' are required";
const NOT_AN_OBJECT_MESSAGE = "the request body must be a JSON object";
const UNAVAILABLE_MESSAGE = "the identity link could not be checked or created; try again";

function badRequest(message: string): Response {
  return Response.json({ message }, { status: 400 });
}

function success(outcome: LinkOutcome): Response {
  return Response.json({ message: "Success", outcome });
}

// The Endpoint Workflows page documents the Response a workflow returns, not
// what the platform answers when a workflow throws; so a failed platform call
// is answered here, with a status the worker retries. Logged without the
// identifiers or the error's text (which may quote them).
function unavailable(step: "check" | "create", error: unknown): Response {
  const kind = error instanceof Error ? error.name : typeof error;
  console.error(`link-identities: the ${step} step failed (${kind})`);
  return Response.json({ message: UNAVAILABLE_MESSAGE }, { status: 503 });
}

function isNonEmptyString(value: unknown): value is string {
  return typeof value === "string" && value.trim() !== "";
}

const linkIdentities: EndpointWorkflow = async ({ request, utils }) => {
  let payload: unknown;
  try {
    payload = await request.json();
  } catch {
    return badRequest(NOT_AN_OBJECT_MESSAGE);
  }
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
    return badRequest(NOT_AN_OBJECT_MESSAGE);
  }

  const { anonymousIdentifier, userIdentifier } = payload as LinkIdentitiesPayload;
  if (!isNonEmptyString(anonymousIdentifier) || !isNonEmptyString(userIdentifier)) {
    return badRequest(REQUIRED_MESSAGE);
  }

  const source: WorkflowUserIdentifier = { identifier: anonymousIdentifier, userType: "anonymous" };

  // Check first: the links whose source is this anonymous identity. Already
  // linked to this user: nothing to do (no duplicate link between the two).
  let alreadyLinked: boolean;
  try {
    const links = await utils.identity.getLinkedTargets(source);
    alreadyLinked = links.some((link) => link.target.identifier === userIdentifier);
  } catch (error) {
    return unavailable("check", error);
  }
  if (alreadyLinked) {
    return success("already_linked");
  }

  // Create only where none exists.
  const link: CreateIdentityLinkArgs = {
    strategy: "copy_once",
    source,
    target: { identifier: userIdentifier, userType: "authenticated" },
    reason: "conversion",
  };
  try {
    await utils.identity.createLink(link);
  } catch (error) {
    return unavailable("create", error);
  }

  return success("created");
};

export default linkIdentities;
