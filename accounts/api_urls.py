from django.urls import path

from accounts import apis

urlpatterns = [
    path("auth/token", apis.TokenObtainApi.as_view(), name="api-token"),
    path("auth/token/refresh", apis.TokenRefreshApi.as_view(), name="api-token-refresh"),
    path("auth/logout", apis.LogoutApi.as_view(), name="api-logout"),
]
