"""`sgl serve`: SGLang-native and OpenAI-compatible routes over the bridge to one engine
(`app.py` builds the app; `native.py`, `openai_routes.py` the routes; `serving.py` what they
share)."""
