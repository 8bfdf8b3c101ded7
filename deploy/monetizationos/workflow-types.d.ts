/**
 * Minimal declarations of the MonetizationOS endpoint-workflow API that
 * link-identities.ts uses, so the workflow can be type-checked and tested
 * outside the MonetizationOS editor.
 *
 * The recipe "Link Identities with an Endpoint" imports the real types from the
 * platform (`import type { … } from "./src/lib/workflow-types/genericDocsWorkflowTypes"`);
 * our copy of it had lost its identifiers, so the names below are reconstructed
 * from its shape: a default-exported async handler that receives the request
 * and an SDK object, reads the JSON body, lists the identity links of the
 * anonymous identity, creates a `copy_once` link with reason `conversion`, and
 * answers with `Response.json(...)`. The MonetizationOS editor type-checks the
 * pasted workflow against the real definitions; where a name differs, follow
 * the editor and adjust this file to match.
 */

/** The two kinds of identity a link connects. */
export type IdentityType = "anonymous" | "authenticated";

/** One identity: its identifier and kind. */
export interface IdentityReference {
  identifier: string;
  type: IdentityType;
}

/**
 * How the source identity's data reaches the target. `copy_once`: copied to
 * the target when the link is created (the recipe's choice for a conversion).
 */
export type IdentityLinkType = "copy_once";

/** An identity link as the platform returns it. */
export interface IdentityLink {
  id?: string;
  type: IdentityLinkType;
  source: IdentityReference;
  target: IdentityReference;
  reason?: string;
  createdAt?: string;
}

export interface CreateIdentityLinkInput {
  type: IdentityLinkType;
  source: IdentityReference;
  target: IdentityReference;
  /** Why the link exists, e.g. `conversion` (sign-up or log-in). */
  reason: string;
  /** Link options (the recipe passes one boolean flag set to false). */
  options?: Record<string, boolean>;
}

export interface IdentityLinksApi {
  /** The links whose source is the given identity. */
  list(source: IdentityReference): Promise<IdentityLink[]>;
  create(input: CreateIdentityLinkInput): Promise<IdentityLink>;
}

/** Platform services available to a workflow. */
export interface WorkflowSdk {
  identityLinks: IdentityLinksApi;
}

export interface EndpointWorkflowContext {
  /** The incoming HTTP request (already authenticated by the endpoint's access level). */
  request: Request;
  sdk: WorkflowSdk;
}

/** An endpoint workflow: the default export of the workflow file. */
export type EndpointWorkflow = (context: EndpointWorkflowContext) => Promise<Response>;
