/// The OpenAPI 3 document of every route, served at `/openapi.json` (written by hand; the router
/// tests check that each route it names answers, and that each route the server has is in it).
enum OpenAPIDocument {
    static let json = #"""
{
  "openapi": "3.0.3",
  "info": {
    "title": "Diffuse",
    "version": "0.1.0",
    "description": "diffuse serve: Diffuse's own job API, the AUTOMATIC1111 web UI routes, and OpenAI's image generation. With --api-key every route but /healthz needs Authorization: Bearer KEY."
  },
  "components": {
    "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
    "schemas": {
      "Error": {
        "type": "object",
        "properties": {
          "detail": { "type": "string" },
          "error": { "type": "object", "properties": { "message": { "type": "string" }, "type": { "type": "string" }, "code": { "type": "integer" } } }
        }
      },
      "JobRequest": {
        "type": "object",
        "properties": {
          "model": { "type": "string", "description": "A served model's name (default: the first that suits)." },
          "prompt": { "type": "string", "description": "Text-to-image models only." },
          "negative_prompt": { "type": "string" },
          "steps": { "type": "integer", "minimum": 1 },
          "scheduler": { "type": "string", "description": "ddim, euler, euler-ancestral, dpm, unipc, pndm, lms, heun, ddpm, an A1111 sampler name or a diffusers class name." },
          "eta": { "type": "number", "minimum": 0, "maximum": 1 },
          "seed": { "type": "integer", "minimum": -1, "description": "-1: random." },
          "count": { "type": "integer", "minimum": 1 },
          "classes": { "oneOf": [ { "type": "string" }, { "type": "integer" }, { "type": "array", "items": { "type": "integer" } } ], "description": "Class-conditional models: 3, 0-9, 0,1,2 or class names." },
          "guidance_scale": { "type": "number", "minimum": 0, "maximum": 100 },
          "guidance_rescale": { "type": "number", "minimum": 0, "maximum": 1 },
          "guides": { "type": "array", "items": { "type": "string" }, "description": "Loss guidance terms, color=#RRGGBB (pixel RGB models)." },
          "color": { "type": "string", "pattern": "^#?[0-9A-Fa-f]{6}$", "description": "Shorthand for guides: [color=...]." },
          "guide_scale": { "type": "number", "minimum": 0 },
          "guide_mode": { "type": "string", "enum": ["shortcut", "full"] },
          "width": { "type": "integer", "minimum": 8 },
          "height": { "type": "integer", "minimum": 8 },
          "clip_skip": { "type": "integer", "minimum": 0 },
          "init_image": { "type": "string", "format": "byte", "description": "Image-to-image: base64 PNG or JPEG." },
          "mask": { "type": "string", "format": "byte", "description": "Inpainting: base64 PNG mask for init_image (white repaints), the same size." },
          "strength": { "type": "number", "minimum": 0, "maximum": 1 },
          "preview_every": { "type": "integer", "minimum": 0 },
          "loras": { "type": "array", "items": { "oneOf": [ { "type": "string", "description": "name or name:scale" }, { "type": "object", "properties": { "name": { "type": "string" }, "scale": { "type": "number" } }, "required": ["name"] } ] }, "description": "Stable Diffusion: LoRAs by the names the server was started with (--lora), unfused, for this job only." },
          "clip_model": { "type": "string", "description": "A CLIP model the server was started with (--clip-model): Stable Diffusion CLIP guidance, or pixel models' clip=PROMPT guides." },
          "clip_guidance_scale": { "type": "number", "minimum": 0, "description": "Stable Diffusion CLIP guidance scale (default 100)." },
          "clip_prompt": { "type": "string", "description": "What CLIP compares with (default: the prompt)." },
          "clip_cutouts": { "type": "integer", "minimum": 1, "maximum": 64 },
          "classifier": { "type": "string", "description": "Pixel models: a classifier the server was started with (--classifier), steering towards classes." },
          "classifier_scale": { "type": "number", "minimum": 0 },
          "cancel_on_disconnect": { "type": "boolean" }
        }
      },
      "Job": {
        "type": "object",
        "properties": {
          "id": { "type": "string" }, "model": { "type": "string" },
          "state": { "type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"] },
          "step": { "type": "integer" }, "steps": { "type": "integer" }, "seed": { "type": "integer" },
          "info": { "type": "string" }, "seconds": { "type": "number" },
          "images": { "type": "array", "items": { "type": "string", "format": "byte" } },
          "error": { "type": "string" },
          "batched_images": { "type": "integer", "description": "Images of the batched sampling run that made this job's (absent: it ran alone)." }
        }
      },
      "Automatic1111Request": {
        "type": "object",
        "properties": {
          "prompt": { "type": "string" }, "negative_prompt": { "type": "string" }, "steps": { "type": "integer" },
          "cfg_scale": { "type": "number" }, "sampler_name": { "type": "string" }, "sampler_index": { "type": "string" },
          "seed": { "type": "integer" }, "width": { "type": "integer" }, "height": { "type": "integer" },
          "batch_size": { "type": "integer" }, "n_iter": { "type": "integer" }, "eta": { "type": "number" },
          "denoising_strength": { "type": "number" },
          "init_images": { "type": "array", "items": { "type": "string", "format": "byte" } },
          "mask": { "type": "string", "description": "Base64 PNG inpainting mask, white repaints; the init image's size." },
          "override_settings": { "type": "object", "properties": { "sd_model_checkpoint": { "type": "string" } } }
        }
      },
      "Automatic1111Response": {
        "type": "object",
        "properties": {
          "images": { "type": "array", "items": { "type": "string", "format": "byte" } },
          "parameters": { "type": "object" },
          "info": { "type": "string" }
        }
      }
    },
    "responses": {
      "BadRequest": { "description": "Bad input, with a message.", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
      "NotFound": { "description": "No such job.", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
      "TooLarge": { "description": "The body is over the limit.", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
      "QueueFull": { "description": "The model's queue is full; see Retry-After.", "headers": { "Retry-After": { "schema": { "type": "integer" } } }, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
      "Unauthorized": { "description": "Missing or wrong bearer key.", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
    }
  },
  "security": [ { "bearer": [] } ],
  "paths": {
    "/": { "get": { "summary": "The web page.", "responses": { "200": { "description": "HTML", "content": { "text/html": {} } } } } },
    "/healthz": { "get": { "summary": "Liveness (no key needed).", "security": [], "responses": { "200": { "description": "ok" } } } },
    "/metrics": { "get": { "summary": "Prometheus text: queue length, jobs, steps per second, latency histogram.", "responses": { "200": { "description": "text", "content": { "text/plain": {} } } } } },
    "/openapi.json": { "get": { "summary": "This document.", "responses": { "200": { "description": "OpenAPI 3" } } } },
    "/api/v1/models": { "get": { "summary": "The served models.", "responses": { "200": { "description": "models" } } } },
    "/api/v1/jobs": {
      "get": { "summary": "Known jobs.", "responses": { "200": { "description": "jobs" } } },
      "post": {
        "summary": "Queue a job (the options of diffuse sample / diffuse generate).",
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/JobRequest" } } } },
        "responses": { "202": { "description": "queued" }, "400": { "$ref": "#/components/responses/BadRequest" }, "401": { "$ref": "#/components/responses/Unauthorized" }, "413": { "$ref": "#/components/responses/TooLarge" }, "429": { "$ref": "#/components/responses/QueueFull" } }
      }
    },
    "/api/v1/jobs/{id}": {
      "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } } ],
      "get": { "summary": "A job, with its images once succeeded.", "responses": { "200": { "description": "job", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Job" } } } }, "404": { "$ref": "#/components/responses/NotFound" } } },
      "delete": { "summary": "Cancel a job (a running one stops within a step).", "responses": { "200": { "description": "job" }, "404": { "$ref": "#/components/responses/NotFound" } } }
    },
    "/api/v1/jobs/{id}/events": {
      "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } } ],
      "get": { "summary": "Server-sent events: queued, started, step (step, steps, timestep, steps_per_second, guidance_loss, log_probability, base64 PNG previews sample (x_t) and predicted_original (x0)), log, and succeeded / failed / cancelled.", "responses": { "200": { "description": "event stream", "content": { "text/event-stream": {} } }, "404": { "$ref": "#/components/responses/NotFound" } } }
    },
    "/api/v1/jobs/{id}/images/{index}": {
      "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }, { "name": "index", "in": "path", "required": true, "schema": { "type": "string" }, "description": "0, 1, ... optionally with .png" } ],
      "get": { "summary": "One result PNG (its tEXt chunk 'parameters' holds the parameters).", "responses": { "200": { "description": "PNG", "content": { "image/png": {} } }, "404": { "$ref": "#/components/responses/NotFound" }, "409": { "description": "The job has no images." } } }
    },
    "/sdapi/v1/txt2img": { "post": { "summary": "AUTOMATIC1111 text-to-image.", "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Automatic1111Request" } } } }, "responses": { "200": { "description": "images", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Automatic1111Response" } } } }, "400": { "$ref": "#/components/responses/BadRequest" }, "413": { "$ref": "#/components/responses/TooLarge" }, "429": { "$ref": "#/components/responses/QueueFull" } } } },
    "/sdapi/v1/img2img": { "post": { "summary": "AUTOMATIC1111 image-to-image (init_images, denoising_strength).", "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Automatic1111Request" } } } }, "responses": { "200": { "description": "images", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Automatic1111Response" } } } }, "400": { "$ref": "#/components/responses/BadRequest" }, "413": { "$ref": "#/components/responses/TooLarge" }, "429": { "$ref": "#/components/responses/QueueFull" } } } },
    "/sdapi/v1/progress": { "get": { "summary": "AUTOMATIC1111 progress: progress, eta_relative, state, current_image.", "parameters": [ { "name": "skip_current_image", "in": "query", "schema": { "type": "boolean" } } ], "responses": { "200": { "description": "progress" } } } },
    "/sdapi/v1/interrupt": { "post": { "summary": "Interrupt the running jobs.", "responses": { "200": { "description": "{}" } } } },
    "/sdapi/v1/options": {
      "get": { "summary": "AUTOMATIC1111 options: sd_model_checkpoint, the model of requests that name none.", "responses": { "200": { "description": "options" } } },
      "post": { "summary": "Set sd_model_checkpoint (a served text-to-image model).", "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "properties": { "sd_model_checkpoint": { "type": "string" } } } } } }, "responses": { "200": { "description": "{}" }, "400": { "$ref": "#/components/responses/BadRequest" } } }
    },
    "/sdapi/v1/samplers": { "get": { "summary": "Sampler names.", "responses": { "200": { "description": "samplers" } } } },
    "/sdapi/v1/sd-models": { "get": { "summary": "The text-to-image models.", "responses": { "200": { "description": "models" } } } },
    "/v1/images/generations": {
      "post": {
        "summary": "OpenAI image generation (prompt, n, size, response_format b64_json or url).",
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["prompt"], "properties": { "prompt": { "type": "string" }, "model": { "type": "string" }, "n": { "type": "integer", "minimum": 1 }, "size": { "type": "string", "example": "512x512" }, "response_format": { "type": "string", "enum": ["b64_json", "url"] } } } } } },
        "responses": { "200": { "description": "created, data[].b64_json" }, "400": { "$ref": "#/components/responses/BadRequest" }, "429": { "$ref": "#/components/responses/QueueFull" } }
      }
    }
  }
}
"""#
}
