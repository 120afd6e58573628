#!/usr/bin/env python3
"""Real clients against `diffuse serve`: the official `openai` package's images.generate, and a
txt2img request shaped as Open WebUI's Automatic1111 engine sends it (its body and headers).

    diffuse serve Tests/Fixtures/sd-pipeline/tiny --port 7860 --api-key KEY &
    python3 Scripts/serve-clients.py --url http://127.0.0.1:7860 --api-key KEY
Needs `pip install openai`.
"""
import argparse, base64, json, urllib.request

import openai


def png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--api-key", default="unused")
    arguments = parser.parse_args()

    # 1. The official openai client.
    client = openai.OpenAI(base_url=arguments.url + "/v1", api_key=arguments.api_key)
    result = client.images.generate(prompt="a lighthouse at dusk", n=2, size="64x64", response_format="b64_json")
    sizes = [png_size(base64.b64decode(image.b64_json)) for image in result.data]
    print(f"openai {openai.__version__} images.generate: {len(result.data)} images {sizes}, created {result.created}")
    try:
        client.images.generate(prompt="a lighthouse", n=1, size="65x64", response_format="b64_json")
        print("openai bad size: no error (unexpected)")
    except openai.BadRequestError as error:
        print(f"openai bad size: BadRequestError {error.status_code}: {error.body.get('message') if isinstance(error.body, dict) else error.body}")

    # 2. Open WebUI's Automatic1111 engine: GET options and sd-models, then POST txt2img with its body.
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {arguments.api_key}"}
    def call(method, path, body=None):
        request = urllib.request.Request(arguments.url + path, method=method, headers=headers,
                                         data=json.dumps(body).encode() if body is not None else None)
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())
    options = call("GET", "/sdapi/v1/options")
    models = call("GET", "/sdapi/v1/sd-models")
    print(f"open-webui options: sd_model_checkpoint={options.get('sd_model_checkpoint')}; sd-models: {[m['title'] for m in models]}")
    # open_webui/routers/images.py (automatic1111 engine): data = {prompt, batch_size, width, height, [steps], [negative_prompt],
    # [cfg_scale], [sampler_name], [scheduler]} posted to {AUTOMATIC1111_BASE_URL}/sdapi/v1/txt2img.
    body = {"prompt": "a red fox in the snow", "batch_size": 1, "width": 64, "height": 64, "steps": 4,
            "negative_prompt": "blurry", "cfg_scale": 7.0, "sampler_name": "Euler a", "scheduler": "Automatic"}
    answer = call("POST", "/sdapi/v1/txt2img", body)
    info = json.loads(answer["info"])
    print(f"open-webui txt2img: {len(answer['images'])} image {png_size(base64.b64decode(answer['images'][0]))}, "
          f"seed {info['seed']}, parameters echo prompt={answer['parameters']['prompt']!r}")


if __name__ == "__main__":
    main()
