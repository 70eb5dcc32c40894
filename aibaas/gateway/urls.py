"""/v1 inference endpoints (mounted into aibaas.urls.v1_patterns)."""

from django.urls import path

from aibaas.gateway import views

urlpatterns = [
    path("models", views.models_list, name="v1-models"),
    path("models/<path:model>", views.models_retrieve, name="v1-model"),
    path("chat/completions", views.chat_completions, name="v1-chat-completions"),
    path("embeddings", views.embeddings, name="v1-embeddings"),
]
